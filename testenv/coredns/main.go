// CoreDNS for the node tier's cluster DNS, with only the plugins its Corefile uses
// (testenv/node.py): the kubernetes plugin answering cluster.local, and what serves probes.
// CoreDNS's own main imports all of its ~60 plugins (cloud DNS providers, etcd, dnstap, ...);
// this one compiles a few, so a cold build takes minutes instead of most of an hour.
// Built by testenv/build.sh at COREDNS_VERSION (testenv/versions.env).
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// In CoreDNS's execution order (core/dnsserver/zdirectives.go), restricted to the plugins above.
var directives = []string{
	"reload",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	coremain.Run()
}
