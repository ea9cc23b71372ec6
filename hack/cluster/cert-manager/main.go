// Command cert-manager-controller runs the part of cert-manager's controller that the
// spec.mesh.issuerRef tests need: Certificates (trigger, key manager, request manager, issuing,
// readiness, revision manager), Issuers and ClusterIssuers, the CA and self-signed issuers, and the
// CertificateRequest approver.
//
// It is our own small main written against cert-manager's published Go module (pkg/controller's
// Known controllers and ContextFactory); cert-manager's own main is in an unpublished nested
// module, so it cannot be fetched through the Go module proxy. It is test-environment plumbing for
// the local cluster: no leader election, no webhook, no ACME/Vault/Venafi, no metrics or health server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"

	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"k8s.io/klog/v2"

	// Each of these registers its controller (or issuer) in an init function.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// controllers is exactly what runs; main refuses to start if one of them did not register.
var controllers = []string{
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
	"certificates-issuing",
	"certificates-key-manager",
	"certificates-readiness",
	"certificates-request-manager",
	"certificates-revision-manager",
	"certificates-trigger",
	"clusterissuers",
	"issuers",
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster (empty: in-cluster)")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager", "namespace of ClusterIssuers' secrets")
	namespace := flag.String("namespace", "", "watch only this namespace (empty: all)")
	workers := flag.Int("workers", 2, "workers per controller")
	klog.InitFlags(nil) // -v and klog's other flags
	flag.Parse()
	logf.InitLogs()
	defer logf.FlushLogs()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	if err := run(ctx, *kubeconfig, *clusterNS, *namespace, *workers); err != nil {
		logf.Log.Error(err, "cert-manager controller failed")
		logf.FlushLogs()
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, clusterNS, namespace string, workers int) error {
	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		Namespace:          namespace,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: clusterNS},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	known := controller.Known()
	missing := []string{}
	for _, name := range controllers {
		if known[name] == nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("controllers not registered by this cert-manager version: %v", missing)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(controllers))
	for _, name := range controllers {
		c, err := known[name](factory)
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("constructing %s: %w", name, err)
		}
		wg.Add(1)
		go func(name string, c controller.Interface) {
			defer wg.Done()
			logf.Log.Info("starting controller", "controller", name)
			if err := c.Run(workers, ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}(name, c)
	}

	// The controllers registered their informers on the factory's shared informer factories
	// while being constructed; start them now (Build returns a context sharing those factories).
	shared, err := factory.Build("informers")
	if err != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("building the informers' context: %w", err)
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	wg.Wait()
	shared.HTTP01ResourceMetadataInformersFactory.Shutdown()
	shared.KubeSharedInformerFactory.Shutdown()
	shared.SharedInformerFactory.Shutdown()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	return errors.Join(all...)
}
