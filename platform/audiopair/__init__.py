"""audiopair: a Ray platform for paired-audio language models (ADIFF, ACC)."""
