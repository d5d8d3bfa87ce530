package certfix

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
)

// Every remedy flower-certs does is worded with its command, the general
// words first, so that the fix reads on.
func TestRemedy(t *testing.T) {
	for r, want := range map[certfile.Remedy]string{
		certfile.RemedyIssueServer:      `issue a new server certificate from the same CA with "flower-certs --force"`,
		certfile.RemedyIssueServerKey:   `with "flower-certs --force" (ECDSA P-256 by default, or --key-type rsa-2048)`,
		certfile.RemedyIssueServerNames: `"flower-certs --force --host NAME"`,
		certfile.RemedyWriteAgain:       `write it again (for example with "flower-certs --force")`,
		certfile.RemedyNewCA:            `make a new CA with "flower-certs --new-ca" and give clients the new ca.crt`,
		certfile.RemedyIssueClient:      `with "flower-certs node --force NAME" (or "flower-certs serverapp --force NAME")`,
		certfile.RemedyIssueClientKey:   `"flower-certs serverapp --force NAME") (ECDSA P-256 by default, or --key-type rsa-2048)`,
		certfile.RemedyWriteCRL:         `write an empty CRL of the CA with "flower-certs revoke --dir /etc/sepal"`,
		certfile.RemedyCompleteWrite:    `run "flower-certs --dir '/etc/my certs'" to complete it`,
	} {
		path := "/etc/sepal/crl.pem"
		if r == certfile.RemedyCompleteWrite {
			path = "/etc/my certs/server.key"
		}
		if got := Remedy(r, path); !strings.Contains(got, want) {
			t.Errorf("%v: %q lacks %q", r, got, want)
		}
	}
	if got := Remedy(certfile.RemedyWriteCRL, "/x/revoked.pem"); !strings.Contains(got, `"flower-certs revoke --dir CA_FOLDER"`) {
		t.Errorf("a CRL not named crl.pem: %q", got)
	}
	for _, r := range []certfile.Remedy{certfile.RemedyNone, certfile.RemedyRenewElsewhere} {
		if got := Remedy(r, "x"); got != "" {
			t.Errorf("%v: %q, want certfile's words kept", r, got)
		}
	}
	for r := certfile.RemedyNone; r <= certfile.RemedyCompleteWrite; r++ {
		if r != certfile.RemedyNone && r != certfile.RemedyRenewElsewhere && Remedy(r, "x") == "" {
			t.Errorf("remedy %v has no command", r)
		}
	}
}

// Reword names the flower-certs command in real errors of certfile, also
// wrapped, and keeps what they match.
func TestReword(t *testing.T) {
	dir := t.TempDir()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := ca.IssueServer(selfsigned.ServerOptions{})
	b, _ := ca.IssueServer(selfsigned.ServerOptions{})
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile, cert, key := write("ca.crt", ca.CertPEM), write("server.pem", a.CertPEM), write("server.key", b.KeyPEM)
	_, err = certfile.Check(caFile, cert, key, time.Time{})
	got := Reword(fmt.Errorf("--certificates: %w", err))
	if !errors.Is(got, certfile.ErrKeyMismatch) || !strings.HasPrefix(got.Error(), "--certificates: key file "+key+": ") ||
		!strings.HasSuffix(got.Error(), `or issue a new server certificate from the same CA with "flower-certs --force"`) {
		t.Errorf("a key of another certificate: %v", got)
	}

	// An interrupted write in the folder.
	write(".sepal-set-journal", []byte("sepal-set 1\nserver.key\n"))
	_, err = certfile.Check(caFile, cert, key, time.Time{})
	if got := Reword(err).Error(); !strings.Contains(got, `run "flower-certs --dir `+dir+`" to complete it; or `) || !strings.Contains(got, `"flower-certs --force"`) {
		t.Errorf("an interrupted write: %v", got)
	}
	os.Remove(filepath.Join(dir, ".sepal-set-journal"))

	// A CRL of another CA.
	other, _ := selfsigned.NewCA(selfsigned.CAOptions{})
	crl, _ := other.SignCRL(nil, nil, time.Time{})
	_, err = certfile.LoadCRL(write("crl.pem", crl.PEM), ca.Cert)
	if got := Reword(err); !errors.Is(got, certfile.ErrCRLIssuer) || !strings.Contains(got.Error(), `write an empty CRL of the CA with "flower-certs revoke --dir `+dir+`" in its place`) {
		t.Errorf("a CRL of another CA: %v", got)
	}

	other2 := errors.New("not a file's")
	if Reword(nil) != nil || Reword(other2) != other2 {
		t.Error("Reword changed an error that is not a file's")
	}
}
