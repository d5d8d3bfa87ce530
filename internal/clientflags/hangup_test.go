package clientflags

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestHangupSaysWhatIsReadOnce(t *testing.T) {
	for _, c := range []struct {
		f    Flags
		want string
	}{
		{Flags{Insecure: true}, "plaintext (--insecure) has no certificate"},
		{Flags{RootCertificates: "ca.crt"}, "--root-certificates is read once, when the connection is made"},
		{Flags{}, "the system's root certificates are read once, when the connection is made"},
		{Flags{RootCertificates: "ca.crt", clientCert: clientCert{ClientCertificate: "n.pem"}}, "--root-certificates and --client-certificate are read once"},
		{Flags{clientCert: clientCert{ClientCertificate: "n.pem"}}, "the system's root certificates and --client-certificate are read once"},
	} {
		var b bytes.Buffer
		ctx, hup, stop := cli.Signals(t.Context(), slog.New(slog.NewTextHandler(&b, nil)))
		_ = ctx
		c.f.Hangup(hup)
		hup.Handle()
		stop()
		if !bytes.Contains(b.Bytes(), []byte("SIGHUP: nothing to reload: "+c.want)) {
			t.Errorf("%+v: logged %q, want %q", c.f, b.String(), c.want)
		}
	}
}
