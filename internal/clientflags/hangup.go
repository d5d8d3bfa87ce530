package clientflags

import "github.com/sepal-fl/sepal/internal/cli"

// Hangup says what SIGHUP does for a client of the SuperLink (a SuperNode
// or a ServerApp) given these flags: nothing reloads, as the TLS roots
// are read once when the connection is made; SIGHUP logs that and the
// command goes on.
func (f *Flags) Hangup(hup *cli.Hangup) {
	switch {
	case f.Insecure:
		hup.Nothing("plaintext (--insecure) has no certificate")
	case f.RootCertificates != "":
		hup.Nothing("--root-certificates is read once, when the connection is made")
	default:
		hup.Nothing("the system's root certificates are read once, when the connection is made")
	}
}
