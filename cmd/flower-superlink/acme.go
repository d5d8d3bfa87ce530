package main

// This file is the seam between flower-superlink and the acme package: the
// --acme-* flags and the CertSource they build. Until ACME lands it only
// registers --acme-domain and refuses it.

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/transport"
)

// acmeFlags are the --acme-* flags.
type acmeFlags struct {
	domains []string
}

// registerACMEFlags adds the --acme-* flags to fs.
func registerACMEFlags(fs *pflag.FlagSet) *acmeFlags {
	a := &acmeFlags{}
	fs.StringArrayVar(&a.domains, "acme-domain", nil, "obtain and renew the certificate for this domain from an ACME CA (repeatable)")
	return a
}

// enabled reports whether any --acme-* flag asks for ACME.
func (a *acmeFlags) enabled() bool { return len(a.domains) > 0 }

// source builds the ACME CertSource and obtains (or loads from storage) a
// certificate for every domain before it returns. The caller runs it in the
// background if it is a transport.Runner.
func (a *acmeFlags) source(ctx context.Context, log *slog.Logger) (transport.CertSource, error) {
	return nil, errors.New("--acme-domain: ACME is not built yet; use --certificates")
}
