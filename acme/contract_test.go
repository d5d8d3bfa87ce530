package acme_test

import (
	"github.com/sepal-fl/sepal/acme"
	"github.com/sepal-fl/sepal/transport"
)

var (
	_ transport.CertSource = (*acme.Source)(nil)
	_ transport.Runner     = (*acme.Source)(nil)
	_ transport.ALPNSource = (*acme.Source)(nil)
)
