package clientflags

import "github.com/sepal-fl/sepal/internal/cli"

// Hangup says what SIGHUP does for a client of the SuperLink (a SuperNode
// or a ServerApp) given these flags: nothing reloads, as the TLS roots
// and the client certificate are read once, when the connection is made;
// SIGHUP logs that and the command goes on.
func (f *Flags) Hangup(hup *cli.Hangup) {
	var why string
	switch {
	case f.Insecure:
		hup.Nothing("plaintext (--insecure) has no certificate")
		return
	case f.RootCertificates != "":
		why = "--root-certificates"
	default:
		why = "the system's root certificates"
	}
	if f.ClientCertificate != "" {
		why += " and --client-certificate are"
	} else {
		why += " is"
		if f.RootCertificates == "" {
			why = "the system's root certificates are"
		}
	}
	hup.Nothing(why + " read once, when the connection is made")
}
