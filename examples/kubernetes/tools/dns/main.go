// Command dns is the smallest cluster DNS that answers Service names: A records
// for <service>.<namespace>.svc.<domain> with the Service's ClusterIP, learned
// from the apiserver with a client-go watch (informer). It forwards nothing:
// every other name gets NXDOMAIN, other record types of a known name an empty
// answer (so resolvers that ask A and AAAA at once still succeed). Headless
// Services (no ClusterIP) and ExternalName Services are not answered.
//
// It is what the Kubernetes cluster image runs instead of CoreDNS, which the Go
// module proxy does not serve (see ../../README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	listen := flag.String("listen", ":5353", "UDP and TCP address to answer on")
	domain := flag.String("domain", "cluster.local", "cluster domain")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	ttl := flag.Uint("ttl", 5, "TTL of the answers, seconds")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*listen, *domain, *kubeconfig, uint32(*ttl), log); err != nil {
		log.Error("dns stopped", "err", err)
		os.Exit(1)
	}
}

func run(listen, domain, kubeconfig string, ttl uint32, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	// Only the core/v1 client (not the whole clientset): a smaller binary.
	cs, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	lw := cache.NewListWatchFromClient(cs.RESTClient(), "services", corev1.NamespaceAll, fields.Everything())
	inf := cache.NewSharedIndexInformer(lw, &corev1.Service{}, 10*time.Minute, cache.Indexers{})
	go inf.Run(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
		return fmt.Errorf("services not listed from the apiserver within 2 minutes")
	}
	log.Info("services synced", "count", len(inf.GetStore().ListKeys()))
	h := &handler{store: inf.GetStore(), suffix: ".svc." + strings.Trim(domain, ".") + ".", ttl: ttl}
	errc := make(chan error, 2)
	servers := []*dns.Server{
		{Addr: listen, Net: "udp", Handler: h},
		{Addr: listen, Net: "tcp", Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
	}
	for _, s := range servers {
		go func() { errc <- s.ListenAndServe() }()
	}
	log.Info("answering", "listen", listen, "domain", domain)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, s := range servers {
		_ = s.Shutdown()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve %s: %w", listen, err)
	}
	return nil
}

type handler struct {
	store  cache.Store
	suffix string // ".svc.cluster.local."
	ttl    uint32
}

// lookup returns the ClusterIP of <svc>.<ns><suffix>, and whether the name
// belongs to a Service at all.
func (h *handler) lookup(qname string) (net.IP, bool) {
	name := strings.ToLower(qname)
	if !strings.HasSuffix(name, h.suffix) {
		return nil, false
	}
	parts := strings.Split(strings.TrimSuffix(name, h.suffix), ".")
	if len(parts) != 2 {
		return nil, false
	}
	obj, ok, err := h.store.GetByKey(parts[1] + "/" + parts[0])
	if err != nil || !ok {
		return nil, false
	}
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil, false
	}
	ip := net.ParseIP(svc.Spec.ClusterIP).To4()
	if ip == nil {
		return nil, false
	}
	return ip, true
}

func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	ip, ok := h.lookup(q.Name)
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: h.ttl},
			A:   ip,
		})
	}
	_ = w.WriteMsg(m)
}
