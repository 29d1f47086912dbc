{{/* ------------------------------------------------------------------ names & labels */}}

{{- define "audiopair.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name. Truncated to 40 characters (not the usual 63) so that derived names stay valid:
KubeRay limits RayCluster names to 53 and RayJob names to 47 characters, and they must be DNS-1035 labels.
*/}}
{{- define "audiopair.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "audiopair.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audiopair.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audiopair.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audiopair.labels" -}}
helm.sh/chart: {{ include "audiopair.chart" . }}
{{ include "audiopair.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: audiopair
{{- end }}

{{- define "audiopair.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audiopair.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "audiopair.rayClusterName" -}}
{{- include "audiopair.fullname" . }}
{{- end }}

{{- define "audiopair.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "audiopair.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ security */}}

{{/* Pod-level securityContext (non-root). */}}
{{- define "audiopair.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* Container-level securityContext (no privilege escalation, all capabilities dropped). */}}
{{- define "audiopair.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* ------------------------------------------------------------------ service URLs */}}

{{- define "audiopair.svcHost" -}}
{{- printf "%s.%s.svc.%s" .name .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{- define "audiopair.mlflowName" -}}
{{- printf "%s-mlflow" (include "audiopair.fullname" .) }}
{{- end }}

{{- define "audiopair.postgresName" -}}
{{- printf "%s-postgres" (include "audiopair.fullname" .) }}
{{- end }}

{{- define "audiopair.minioName" -}}
{{- printf "%s-minio" (include "audiopair.fullname" .) }}
{{- end }}

{{/* MLflow tracking URI handed to Ray pods and jobs. */}}
{{- define "audiopair.mlflowTrackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s:%v" (include "audiopair.svcHost" (dict "name" (include "audiopair.mlflowName" .) "root" .)) .Values.mlflow.service.port }}
{{- else }}
{{- .Values.mlflow.externalTrackingUri }}
{{- end }}
{{- end }}

{{- define "audiopair.postgresHost" -}}
{{- if .Values.mlflow.backendStore.host }}
{{- .Values.mlflow.backendStore.host }}
{{- else if .Values.postgres.enabled }}
{{- include "audiopair.svcHost" (dict "name" (include "audiopair.postgresName" .) "root" .) }}
{{- else }}
{{- fail "mlflow.backendStore.host is empty and postgres.enabled is false: set mlflow.backendStore.host to your Postgres server (or enable the dev Postgres)" }}
{{- end }}
{{- end }}

{{- define "audiopair.s3EndpointUrl" -}}
{{- if .Values.mlflow.artifacts.s3EndpointUrl }}
{{- .Values.mlflow.artifacts.s3EndpointUrl }}
{{- else if .Values.minio.enabled }}
{{- printf "http://%s:9000" (include "audiopair.svcHost" (dict "name" (include "audiopair.minioName" .) "root" .)) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ storage */}}

{{- define "audiopair.pvcName" -}}
{{- if .Values.storage.pvc.existingClaim }}
{{- .Values.storage.pvc.existingClaim }}
{{- else }}
{{- printf "%s-storage" (include "audiopair.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where checkpoints go: the value passed to jobs as storage_path. */}}
{{- define "audiopair.storagePath" -}}
{{- if eq .Values.storage.mode "pvc" }}
{{- printf "%s/%s" (trimSuffix "/" .Values.storage.mountPath) .Values.storage.checkpointsSubdir }}
{{- else }}
{{- required "storage.objectStore.uri is required when storage.mode is objectStore (e.g. s3://bucket/audiopair)" .Values.storage.objectStore.uri }}
{{- end }}
{{- end }}

{{/* Environment shared by every Ray container (head, workers) and, through runtimeEnv, by job drivers. */}}
{{- define "audiopair.rayEnv" -}}
- name: AUDIOPAIR_STORAGE_PATH
  value: {{ include "audiopair.storagePath" . | quote }}
{{- if eq .Values.storage.mode "pvc" }}
- name: AUDIOPAIR_DATA_DIR
  value: {{ printf "%s/%s" (trimSuffix "/" .Values.storage.mountPath) .Values.storage.datasetsSubdir | quote }}
# Hugging Face downloads (GPT-2, Qwen2-Audio) land once on the shared volume instead of on every node.
- name: HF_HOME
  value: {{ printf "%s/hf-cache" (trimSuffix "/" .Values.storage.mountPath) | quote }}
{{- end }}
{{- with (include "audiopair.mlflowTrackingUri" .) }}
- name: MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.storage.mode "objectStore" }}
{{- with .Values.storage.objectStore.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.objectStore.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.objectStore.secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- with .Values.ray.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "audiopair.rayVolumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.sharedMemorySize }}
- name: ray-logs
  emptyDir: {}
{{- if eq .Values.storage.mode "pvc" }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ include "audiopair.pvcName" . }}
{{- end }}
{{- end }}

{{- define "audiopair.rayVolumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: ray-logs
  mountPath: /tmp/ray
{{- if eq .Values.storage.mode "pvc" }}
- name: storage
  mountPath: {{ .Values.storage.mountPath }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ RayCluster spec */}}

{{/*
A Ray container. Args: dict(root, name, resources, ports(bool head)).
*/}}
{{- define "audiopair.rayContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ include "audiopair.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- if .head }}
  ports:
    - {containerPort: 6379, name: gcs-server}
    - {containerPort: 8265, name: dashboard}
    - {containerPort: 10001, name: client}
    - {containerPort: 8080, name: metrics}
  {{- end }}
  env:
    {{- include "audiopair.rayEnv" $root | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- include "audiopair.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    {{- include "audiopair.rayVolumeMounts" $root | nindent 4 }}
  lifecycle:
    preStop:
      exec:
        command: ["/bin/sh", "-c", "ray stop"]
{{- end }}

{{/* Scheduling fields shared by Ray pod templates. Arg: a group's values. */}}
{{- define "audiopair.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Fails rendering when a worker group's bounds are inconsistent (JSON schema cannot compare fields). */}}
{{- define "audiopair.checkGroup" -}}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "worker group %s: minReplicas (%v) > maxReplicas (%v)" .groupName .minReplicas .maxReplicas) }}
{{- end }}
{{- if or (lt (int .replicas) (int .minReplicas)) (gt (int .replicas) (int .maxReplicas)) }}
{{- fail (printf "worker group %s: replicas (%v) must lie within [minReplicas %v, maxReplicas %v]" .groupName .replicas .minReplicas .maxReplicas) }}
{{- end }}
{{- end }}

{{/*
The RayCluster spec, shared by the RayCluster object and by RayJobs in "ephemeral" cluster mode.
*/}}
{{- define "audiopair.rayClusterSpec" -}}
{{- $root := . -}}
{{- $v := .Values.ray -}}
rayVersion: {{ $v.version | quote }}
authOptions:
  mode: {{ $v.auth.mode }}
enableInTreeAutoscaling: {{ $v.autoscaling.enabled }}
{{- if $v.autoscaling.enabled }}
autoscalerOptions:
  version: {{ $v.autoscaling.version }}
  idleTimeoutSeconds: {{ $v.autoscaling.idleTimeoutSeconds }}
  upscalingMode: {{ $v.autoscaling.upscalingMode }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  resources:
    {{- toYaml $v.autoscaling.resources | nindent 4 }}
  securityContext:
    {{- include "audiopair.containerSecurityContext" . | nindent 4 }}
{{- end }}
headGroupSpec:
  serviceType: {{ $v.head.serviceType }}
  rayStartParams:
    {{- toYaml $v.head.rayStartParams | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "audiopair.labels" . | nindent 8 }}
        app.kubernetes.io/component: ray-head
    spec:
      serviceAccountName: {{ include "audiopair.serviceAccountName" . }}
      # The autoscaler sidecar talks to the Kubernetes API (KubeRay binds a Role to this service account).
      automountServiceAccountToken: {{ $v.autoscaling.enabled }}
      {{- with (include "audiopair.imagePullSecrets" .) }}{{ . | trim | nindent 6 }}{{ end }}
      securityContext:
        {{- include "audiopair.podSecurityContext" . | nindent 8 }}
      {{- with (include "audiopair.scheduling" $v.head) }}{{ . | trim | nindent 6 }}{{ end }}
      containers:
        {{- include "audiopair.rayContainer" (dict "root" . "name" "ray-head" "resources" $v.head.resources "head" true) | nindent 8 }}
      volumes:
        {{- include "audiopair.rayVolumes" . | nindent 8 }}
{{- if not (or $v.cpuWorkers.enabled $v.gpuWorkers) }}
workerGroupSpecs: []
{{- else }}
workerGroupSpecs:
{{- end }}
{{- if $v.cpuWorkers.enabled }}
  {{- $g := $v.cpuWorkers }}
  {{- include "audiopair.checkGroup" $g }}
  - groupName: {{ $g.groupName }}
    replicas: {{ $g.replicas }}
    minReplicas: {{ $g.minReplicas }}
    maxReplicas: {{ $g.maxReplicas }}
    rayStartParams:
      {{- toYaml $g.rayStartParams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "audiopair.labels" $root | nindent 10 }}
          app.kubernetes.io/component: ray-worker-{{ $g.groupName }}
      spec:
        serviceAccountName: {{ include "audiopair.serviceAccountName" $root }}
        automountServiceAccountToken: false
        {{- with (include "audiopair.imagePullSecrets" $root) }}{{ . | trim | nindent 8 }}{{ end }}
        securityContext:
          {{- include "audiopair.podSecurityContext" $root | nindent 10 }}
        {{- with (include "audiopair.scheduling" $g) }}{{ . | trim | nindent 8 }}{{ end }}
        containers:
          {{- include "audiopair.rayContainer" (dict "root" $root "name" "ray-worker" "resources" $g.resources) | nindent 10 }}
        volumes:
          {{- include "audiopair.rayVolumes" $root | nindent 10 }}
{{- end }}
{{- range $g := $v.gpuWorkers }}
  {{- include "audiopair.checkGroup" $g }}
  {{- /* nvidia.com/gpu goes into limits and requests (extended resources need them equal). */}}
  {{- $res := deepCopy (default dict $g.resources) }}
  {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $g.gpus) (default dict $res.limits)) }}
  {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" $g.gpus) (default dict $res.requests)) }}
  {{- $tolerations := $g.tolerations | default (list (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule")) }}
  - groupName: {{ $g.groupName }}
    replicas: {{ $g.replicas }}
    minReplicas: {{ $g.minReplicas }}
    maxReplicas: {{ $g.maxReplicas }}
    rayStartParams:
      {{- toYaml (default dict $g.rayStartParams) | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "audiopair.labels" $root | nindent 10 }}
          app.kubernetes.io/component: ray-worker-{{ $g.groupName }}
      spec:
        serviceAccountName: {{ include "audiopair.serviceAccountName" $root }}
        automountServiceAccountToken: false
        {{- with (include "audiopair.imagePullSecrets" $root) }}{{ . | trim | nindent 8 }}{{ end }}
        securityContext:
          {{- include "audiopair.podSecurityContext" $root | nindent 10 }}
        {{- with (include "audiopair.scheduling" (dict "nodeSelector" $g.nodeSelector "tolerations" $tolerations "affinity" $g.affinity)) }}{{ . | trim | nindent 8 }}{{ end }}
        containers:
          {{- include "audiopair.rayContainer" (dict "root" $root "name" "ray-worker" "resources" $res) | nindent 10 }}
        volumes:
          {{- include "audiopair.rayVolumes" $root | nindent 10 }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ MLflow */}}

{{- define "audiopair.mlflowImage" -}}
{{- if .Values.mlflow.image.repository }}
{{- printf "%s:%s" .Values.mlflow.image.repository (required "mlflow.image.tag is required when mlflow.image.repository is set" .Values.mlflow.image.tag) }}
{{- else }}
{{- include "audiopair.image" . }}
{{- end }}
{{- end }}

{{- define "audiopair.mlflowPullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.mlflow.image.pullPolicy }}
{{- end }}

{{/* S3 credentials and endpoint for the MLflow server (artifact store), always from an existing Secret. */}}
{{- define "audiopair.mlflowS3Env" -}}
{{- $a := .Values.mlflow.artifacts -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ $a.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ $a.secretAccessKeyKey }}
- name: ARTIFACTS_DESTINATION
  value: {{ $a.destination | quote }}
{{- with (include "audiopair.s3EndpointUrl" .) }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if $a.ignoreTls }}
- name: MLFLOW_S3_IGNORE_TLS
  value: "true"
{{- end }}
{{- end }}
