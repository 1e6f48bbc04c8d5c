"""localcluster: a real Kubernetes control plane as local processes, for tests and the demo.

kind cannot start on machines without CAP_SYS_RESOURCE (its privileged node containers fail), so
this tool runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake GPU
nodes) as host processes, built once from the Go module proxy and cached. A `kind` provider is
kept for ordinary machines: every test tier only needs a kubeconfig.
"""
