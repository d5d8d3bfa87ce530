package main

// This file says what SIGHUP does in each mode of flower-superlink: it
// reloads the certificate files, or logs that there is nothing to reload.
// It never ends the SuperLink.

import (
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

// reloader is a certificate source that reloads on demand (the file
// source); SIGHUP calls Reload.
type reloader interface {
	Reload() error
}

// hangupBefore says what SIGHUP does while the certificate source is not
// built yet (start-up), and in the modes where it never reloads anything.
func hangupBefore(hup *cli.Hangup, mode tlsMode) {
	switch mode {
	case modeFiles:
		hup.Nothing("the certificate files are not loaded yet (start-up)")
	case modeACME:
		hup.Nothing("ACME certificates (--acme-domain) are renewed on their own, without a reload")
	case modeInsecure:
		hup.Nothing("plaintext (--insecure) has no certificate")
	}
}

// hangupSource makes SIGHUP reload src when it can; a failure names the
// flower-certs command that fixes the file.
func hangupSource(hup *cli.Hangup, src transport.CertSource) {
	if r, ok := src.(reloader); ok {
		hup.Add("certificate files", func() error { return certfix.Reword(r.Reload()) })
	}
}
