// cert-manager-controller runs the real cert-manager controllers (the code of
// github.com/cert-manager/cert-manager's pkg/controller, unchanged) against an API server, so
// the project's tests can watch certificates issued by cert-manager itself rather than by a
// stand-in (issue 18, item 3).
//
// Why a main of our own: upstream's cmd/controller is a separate Go module that the module
// proxy does not serve; only the main module (pkg/..., internal/...) is published. Its
// controllers register themselves with pkg/controller from their packages' init(), exactly as
// upstream's main relies on, so this program imports the packages of the controllers it wants
// and starts them through the same registry (controller.Known), context factory and builder as
// upstream's cmd/controller/app does. What it leaves out is what a test cluster does not need:
// leader election (one replica), the webhook (validation and defaulting; the CRDs' own schemas
// still apply), ACME, Vault and Venafi, the ingress and Gateway shims, the metrics and healthz
// servers.
//
// Enabled controllers (upstream names):
//
//	issuers, clusterissuers                     Issuer / ClusterIssuer Ready conditions
//	certificaterequests-issuer-ca               signs CertificateRequests of CA issuers
//	certificaterequests-approver                approves every CertificateRequest, as a default install does
//	certificates-trigger, -key-manager, -request-manager, -issuing, -readiness, -revision-manager
//	                                            the Certificate life cycle (issue, store, renew, prune)
//
// Logs (klog; `-v`, default 2 as upstream's chart: info level; 4 is debug) go to stderr.
// SIGTERM or SIGINT stops the control loops; the program exits 0 once they have returned.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// The CA issuer's implementation (Setup: checks the CA Secret and sets the Issuer's Ready
	// condition). The issuers controllers find issuer types through this registry, filled by
	// init(); types not imported here (ACME, Vault, Venafi, SelfSigned) are reported as
	// unsupported instead.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
)

// The controllers this program runs, in upstream's names (the names cert-manager's
// `--controllers` flag takes).
var enabled = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	crca.CRControllerName,
	approver.ControllerName,
	trigger.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	issuing.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

// Upstream's back-off after a failed CertificateRequest: 1 h, doubling up to 32 h.
const (
	defaultMinimumBackoff = time.Hour
	defaultMaximumBackoff = 32 * time.Hour
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (default: in-cluster config)")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager",
		"namespace of the Secrets that ClusterIssuers refer to")
	namespace := flag.String("namespace", "", "watch only this namespace (default: all; the clusterissuers controller is then off, as upstream does)")
	workers := flag.Int("workers", 5, "concurrent workers per controller (upstream's default)")
	qps := flag.Float64("kube-api-qps", 20, "client-side rate limit when the API server has no Priority and Fairness (upstream's default)")
	burst := flag.Int("kube-api-burst", 50, "client-side burst (upstream's default)")
	// Of klog's flags only the verbosity: output goes to stderr (klog's default), which the
	// caller redirects. 2 is what upstream's Helm chart runs with (logLevel).
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	_ = klogFlags.Set("v", "2")
	flag.CommandLine.Var(klogFlags.Lookup("v").Value, "v", "log verbosity: 2 is upstream's info level, 4 its debug level")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	klog.EnableContextualLogging(true)
	defer klog.Flush()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := klog.Background().WithName("cert-manager-controller")
	ctx = logf.NewContext(ctx, log)

	if err := run(ctx, controller.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   float32(*qps),
		KubernetesAPIBurst: *burst,
		Namespace:          *namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: *clusterResourceNamespace,
			// Upstream's defaults; they matter only to ACME, Vault and cloud issuers.
			ClusterIssuerAmbientCredentials: true,
			IssuerAmbientCredentials:        false,
		},
		CertificateOptions: controller.CertificateOptions{
			// Upstream's defaults (internal/apis/config/controller/v1alpha1/defaults.go, not
			// importable from another module): annotations copied from a Certificate to its
			// CertificateRequests, and the back-off after a failed request.
			CopiedAnnotationPrefixes:                 []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"},
			CertificateRequestMinimumBackoffDuration: defaultMinimumBackoff,
			CertificateRequestMaximumBackoffDuration: defaultMaximumBackoff,
		},
	}, *workers); err != nil {
		log.Error(err, "exiting")
		klog.Flush()
		os.Exit(1)
	}
	log.Info("control loops exited")
}

func run(ctx context.Context, opts controller.ContextOptions, workers int) error {
	log := logf.FromContext(ctx)
	factory, err := controller.NewContextFactory(ctx, opts)
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	// The informer factories are shared by every controller built from this factory, so one
	// Context is enough to start them (as upstream's main does).
	shared, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	known := controller.Known()
	var loops []controller.Interface
	var names []string
	for _, name := range enabled {
		if opts.Namespace != "" && name == clusterissuers.ControllerName {
			log.Info("not starting controller: scoped to one namespace", "controller", name)
			continue
		}
		construct, ok := known[name]
		if !ok {
			return fmt.Errorf("controller %q is not registered (its package is not imported)", name)
		}
		// Constructing registers the controller's informers with the shared factories, so every
		// controller is constructed before the factories start.
		loop, err := construct(factory)
		if err != nil {
			return fmt.Errorf("constructing controller %q: %w", name, err)
		}
		loops, names = append(loops, loop), append(names, name)
	}

	errs := make(chan error, len(loops))
	var wg sync.WaitGroup
	for i, loop := range loops {
		wg.Go(func() {
			log.Info("starting controller", "controller", names[i])
			if err := loop.Run(workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %q: %w", names[i], err)
			}
		})
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	// One line once every informer has listed, so a caller can wait for it.
	shared.KubeSharedInformerFactory.WaitForCacheSync(ctx.Done())
	shared.SharedInformerFactory.WaitForCacheSync(ctx.Done())
	if ctx.Err() == nil {
		log.Info("caches synced; controllers running", "controllers", names)
	}

	select {
	case <-ctx.Done():
		log.Info("signal received; stopping the control loops")
	case err := <-errs:
		// A loop also returns an error when the signal came before its caches synced.
		if ctx.Err() == nil {
			return err
		}
	}
	wg.Wait()
	shared.KubeSharedInformerFactory.Shutdown()
	shared.SharedInformerFactory.Shutdown()
	return nil
}
