{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "tgi-py.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "tgi-py.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tgi-py.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tgi-py.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tgi-py.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tgi-py.labels" -}}
{{ include "tgi-py.selectorLabels" . }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: tgi-py
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tgi-py.chart" . }}
{{- end }}

{{- define "tgi-py.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Shards per pod: one per GPU when GPUs are requested. */}}
{{- define "tgi-py.shardsPerPod" -}}
{{- if gt (int .Values.gpu.count) 0 }}{{ int .Values.gpu.count }}{{ else }}{{ int .Values.server.numShard }}{{ end }}
{{- end }}

{{/* NUM_SHARD: the tensor-parallel world size. */}}
{{- define "tgi-py.worldSize" -}}
{{- $perPod := include "tgi-py.shardsPerPod" . | int }}
{{- if .Values.multinode.enabled }}{{ mul $perPod (int .Values.multinode.size) }}{{ else }}{{ $perPod }}{{ end }}
{{- end }}

{{/* Refuse a grace period that would kill the server in the middle of its drain. */}}
{{- define "tgi-py.checkGrace" -}}
{{- $need := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.server.gracefulTerminationTimeout) }}
{{- if le (int .Values.lifecycle.terminationGracePeriodSeconds) $need }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + server.gracefulTerminationTimeout (%d)" (int .Values.lifecycle.terminationGracePeriodSeconds) $need) }}
{{- end }}
{{- end }}

{{/* Pod labels; role is "" (Deployment), "leader" or "worker". */}}
{{- define "tgi-py.podLabels" -}}
{{- $ctx := .ctx -}}
{{- include "tgi-py.selectorLabels" $ctx }}
app.kubernetes.io/component: server
{{- with $ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- if .role }}
tgi-py/role: {{ .role }}
{{- end }}
{{- end }}

{{- define "tgi-py.env" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values -}}
- name: PORT
  value: {{ $v.server.port | quote }}
- name: NUM_SHARD
  value: {{ include "tgi-py.worldSize" $ctx | quote }}
{{- if $v.server.dtype }}
- name: DTYPE
  value: {{ $v.server.dtype | quote }}
{{- end }}
- name: MAX_CONCURRENT_REQUESTS
  value: {{ $v.server.maxConcurrentRequests | quote }}
- name: GRACEFUL_TERMINATION_TIMEOUT
  value: {{ $v.server.gracefulTerminationTimeout | quote }}
- name: KV_CACHE_BYTES
  value: {{ $v.server.kvCacheBytes | int64 | quote }}
- name: JSON_OUTPUT
  value: {{ $v.server.jsonOutput | quote }}
- name: SHARD_UDS_PATH
  value: /tmp/text-generation-server
- name: TGI_PY_CACHE
  value: /opt/tgi-py/cache
- name: HF_HOME
  value: /home/tgi/.cache/huggingface
- name: OMP_NUM_THREADS
  valueFrom:
    resourceFieldRef:
      resource: requests.cpu
      divisor: "1"
{{- if $v.model.id }}
- name: MODEL_ID
  value: {{ $v.model.id | quote }}
{{- end }}
{{- if $v.model.revision }}
- name: REVISION
  value: {{ $v.model.revision | quote }}
{{- end }}
{{- if $v.apiKey.existingSecret }}
- name: API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.apiKey.existingSecret }}
      key: {{ $v.apiKey.key }}
{{- end }}
{{- if $v.multinode.enabled }}
- name: MASTER_ADDR
  value: $(LWS_LEADER_ADDRESS)
- name: MASTER_PORT
  value: {{ $v.multinode.masterPort | quote }}
{{- end }}
{{- with $v.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The tgi-py container; role "" (Deployment), "leader" (router + rank 0) or "worker" (shards only). */}}
{{- define "tgi-py.container" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $serves := ne .role "worker" -}}
- name: tgi-py
  image: {{ include "tgi-py.image" $ctx }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - --hostname
    - 0.0.0.0
    {{- if $v.multinode.enabled }}
    - --nnodes
    - $(LWS_GROUP_SIZE)
    - --node-rank
    - $(LWS_WORKER_INDEX)
    {{- end }}
    {{- with $v.server.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "tgi-py.env" . | nindent 4 }}
  {{- if $serves }}
  ports:
    - name: http
      containerPort: {{ $v.server.port }}
      protocol: TCP
    {{- if $v.multinode.enabled }}
    - name: dist
      containerPort: {{ $v.multinode.masterPort }}
      protocol: TCP
    {{- end }}
  startupProbe:
    httpGet:
      path: {{ $v.probes.startup.path }}
      port: http
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: {{ $v.probes.readiness.path }}
      port: http
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    successThreshold: {{ $v.probes.readiness.successThreshold }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: {{ $v.probes.liveness.path }}
      port: http
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  lifecycle:
    preStop:
      exec:
        command:
          - sleep
          - {{ $v.lifecycle.preStopSleepSeconds | quote }}
  {{- end }}
  resources:
    {{- $resources := deepCopy $v.resources }}
    {{- if gt (int $v.gpu.count) 0 }}
    {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" (toString (int $v.gpu.count))) ($resources.requests | default dict)) }}
    {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (toString (int $v.gpu.count))) ($resources.limits | default dict)) }}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: shm
      mountPath: /dev/shm
    - name: cache
      mountPath: /home/tgi/.cache
    {{- if $v.model.persistentVolumeClaim }}
    - name: model
      mountPath: {{ $v.model.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* The pod spec shared by the Deployment and both LeaderWorkerSet templates. */}}
{{- define "tgi-py.podSpec" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values -}}
enableServiceLinks: false
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ $v.lifecycle.terminationGracePeriodSeconds }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $v.tolerations }}
{{- if gt (int $v.gpu.count) 0 }}
{{- $tolerations = concat $v.gpu.tolerations $v.tolerations }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  {{- include "tgi-py.container" . | nindent 2 }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ $v.volumes.tmpSizeLimit }}
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.volumes.shmSizeLimit }}
  - name: cache
    emptyDir:
      sizeLimit: {{ $v.volumes.cacheSizeLimit }}
  {{- if $v.model.persistentVolumeClaim }}
  - name: model
    persistentVolumeClaim:
      claimName: {{ $v.model.persistentVolumeClaim }}
      readOnly: true
  {{- end }}
{{- end }}
