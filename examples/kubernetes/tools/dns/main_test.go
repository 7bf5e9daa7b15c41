package main

import (
	"net"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

type recorder struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }

func TestAnswers(t *testing.T) {
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.5.5"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}},
	} {
		if err := store.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	h := &handler{store: store, suffix: ".svc.cluster.local.", ttl: 5}
	cases := []struct {
		name  string
		qtype uint16
		rcode int
		a     string
	}{
		{"web.default.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, "10.96.5.5"},
		{"WEB.Default.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, "10.96.5.5"},
		{"web.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"web.other.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, ""},
		{"headless.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, ""},
		{"x.web.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, ""},
		{"web.default.svc.cluster.local.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, ""},
		{"example.com.", dns.TypeA, dns.RcodeNameError, ""},
	}
	for _, c := range cases {
		req := new(dns.Msg)
		req.SetQuestion(c.name, c.qtype)
		w := &recorder{}
		h.ServeDNS(w, req)
		if w.msg == nil || w.msg.Rcode != c.rcode {
			t.Errorf("%s %s: reply %v, want rcode %d", c.name, dns.TypeToString[c.qtype], w.msg, c.rcode)
			continue
		}
		switch {
		case c.a == "" && len(w.msg.Answer) != 0:
			t.Errorf("%s: answers %v, want none", c.name, w.msg.Answer)
		case c.a != "" && (len(w.msg.Answer) != 1 || !w.msg.Answer[0].(*dns.A).A.Equal(net.ParseIP(c.a))):
			t.Errorf("%s: answers %v, want %s", c.name, w.msg.Answer, c.a)
		}
	}
}
