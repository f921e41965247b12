// Package check validates the deployment files in deploy/ offline: the
// compose file against the Compose Specification's JSON schema (through
// compose-go, the loader of docker compose), and the Kubernetes manifests
// by strict decoding into the typed objects of k8s.io/api, so an unknown or
// misspelt field fails. A bmpproxy config that a manifest embeds in a
// ConfigMap is parsed with the repository's own package conf (a replace
// directive points at ../..). It is a module of its own, so that the main
// module's go.mod does not carry these dependencies; .ci/run runs its
// tests explicitly.
package check
