module rustronaut.io/e2e/tools/argocd-health

go 1.26.0

// The version Argo CD v3 embeds.
require github.com/yuin/gopher-lua v1.1.1
