{{- define "modeldeploy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "modeldeploy.labels" -}}
app.kubernetes.io/name: modeldeploy-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: modeldeploy-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Rules on namespaced objects: everything the operator reads or writes for a ModelDeployment. */}}
{{- define "modeldeploy.namespacedRules" -}}
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments"]
  # patch: only to remove the one-shot modeldeploy.io/promote and /abort annotations once acted on
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  # the canary validation gate: create a revision's Job, read its outcome, replace a stale one
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  # two per ModelDeployment (networkPolicy.enabled): its serving pods' and its validation Job's
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- if (.Values.activator).enabled }}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  # scale to zero: the slice pointing a model's Service at the activator, and the controller's
  # slices of that Service (deleted at zero: frozen with the pods that went)
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["endpoints"]
  # scale to zero: the Endpoints the endpoints controller left for a Service that lost its selector
  # (the EndpointSlice mirroring controller would mirror its dead pod addresses; kubernetes#91072)
  verbs: ["delete"]
{{- end }}
{{- end -}}


{{/* The default serving image and backend: the GPU image (onnxruntime) when gpuServing.enabled. */}}
{{- define "modeldeploy.servingImage" -}}
{{- if and .Values.gpuServing .Values.gpuServing.enabled }}{{ .Values.gpuServing.image }}{{ else }}{{ .Values.servingImage }}{{ end -}}
{{- end -}}

{{/* The image of modeldeploy's own code in model namespaces (the model-loader and artifact fetch
     init containers, build and validation Jobs): loaderImage, or else the operator's image. Never
     the serving image, which may be NVIDIA's stock Triton with none of our code. */}}
{{- define "modeldeploy.loaderImage" -}}
{{- .Values.loaderImage | default (printf "%s:%s" .Values.image.repository .Values.image.tag) -}}
{{- end -}}

{{- define "modeldeploy.servingBackend" -}}
{{- if and .Values.gpuServing .Values.gpuServing.enabled }}onnxruntime{{ else }}{{ .Values.servingBackend }}{{ end -}}
{{- end -}}

{{/* Non-empty when serving pods of built revisions fetch through the node cache agent: the agent
     runs (artifactCache.enabled) and the operator builds revisions into an S3 store (artifacts.store;
     pods of a pvc:// store read the claim directly). */}}
{{- define "modeldeploy.cacheAgentOn" -}}
{{- if and (.Values.artifactCache).enabled (hasPrefix "s3://" ((.Values.artifacts).store | default "")) }}true{{ end -}}
{{- end -}}

{{/* MD_NETWORK_POLICY: the networkPolicy values and the operator's namespace, as one JSON document
     (operator/modeldeploy/resources/networkpolicy.py parses it). */}}
{{- define "modeldeploy.networkPolicy" -}}
{{- $np := deepCopy (default dict .Values.networkPolicy) -}}
{{- $_ := set $np "operatorNamespace" .Release.Namespace -}}
{{- if include "modeldeploy.cacheAgentOn" . -}}
{{- $labels := dict "app.kubernetes.io/name" "modeldeploy-cache-agent" "app.kubernetes.io/instance" .Release.Name -}}
{{- $_ := set $np "cacheAgent" (dict "podLabels" $labels "port" (int .Values.artifactCache.port)) -}}
{{- end -}}
{{- if (.Values.activator).enabled -}}
{{- $_ := set $np "activator" (dict "podLabels" (dict "app.kubernetes.io/name" "modeldeploy-activator" "app.kubernetes.io/instance" .Release.Name)) -}}
{{- end -}}
{{- toJson $np -}}
{{- end -}}
