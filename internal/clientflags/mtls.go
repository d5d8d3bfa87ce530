package clientflags

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// clientCert is the client certificate of mutual TLS: --client-certificate
// and --client-key.
type clientCert struct {
	ClientCertificate, ClientKey string

	role     string // the role the API dialled admits
	identity string // of the checked certificate, for Describe
}

func (f *Flags) registerClientCert(fs *pflag.FlagSet, api string) {
	role, what, cmd := transport.RoleNode, "node", "flower-certs node NAME"
	if strings.Contains(api, "Driver") {
		role, what, cmd = transport.RoleServerApp, "ServerApp", "flower-certs serverapp"
	}
	f.role = role
	fs.StringVar(&f.ClientCertificate, "client-certificate", "", fmt.Sprintf("PEM %s certificate to present to a SuperLink that requires one (mutual TLS), such as certificates/%ss/NAME.pem from %s", what, f.role, cmd))
	fs.StringVar(&f.ClientKey, "client-key", "", "PEM private key of --client-certificate")
}

// withClientCert adds the client certificate and the role to o, once the
// certificate passed selfsigned.CheckClient (a file error naming the flag:
// exit 1). Conflicts with --insecure, and one flag without the other, are
// usage errors.
func (f *Flags) withClientCert(o transport.ClientOptions) (transport.ClientOptions, error) {
	o.Role = f.role
	switch {
	case f.ClientCertificate == "" && f.ClientKey == "":
		return o, nil
	case f.Insecure:
		return o, cli.Usagef("--insecure and --client-certificate conflict: a client certificate is presented only over TLS; drop --insecure")
	case f.ClientKey == "":
		return o, cli.Usagef("--client-certificate %s needs --client-key with its private key", f.ClientCertificate)
	case f.ClientCertificate == "":
		return o, cli.Usagef("--client-key %s needs --client-certificate with the certificate", f.ClientKey)
	}
	c, err := selfsigned.CheckClient(f.ClientCertificate, f.ClientKey, time.Now())
	if err != nil {
		return o, fmt.Errorf("--client-certificate: %w", err)
	}
	f.identity = ""
	if id, err := transport.IdentityOf(c.Leaf); err == nil {
		f.identity = id.String()
	}
	o.ClientCertificate, o.ClientKey = f.ClientCertificate, f.ClientKey
	return o, nil
}

// describeClientCert is what Describe adds for a client certificate.
func (f *Flags) describeClientCert() string {
	if f.ClientCertificate == "" {
		return ""
	}
	if f.identity != "" {
		return fmt.Sprintf(", presenting %s (%s)", f.ClientCertificate, f.identity)
	}
	return ", presenting " + f.ClientCertificate
}
