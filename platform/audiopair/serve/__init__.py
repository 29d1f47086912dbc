"""Web pages over the layers to the left: the listening-test study and the two-audio explain page."""
