package clientflags

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

// clientCert is the client certificate of mutual TLS: --client-certificate
// and --client-key.
type clientCert struct {
	ClientCertificate, ClientKey string

	role     string // the role the API dialled admits
	api      string // the API dialled, for messages
	identity string // of the checked certificate, for Describe
}

func (f *Flags) registerClientCert(fs *pflag.FlagSet, api string) {
	role, what, cmd := transport.RoleNode, "node", "flower-certs node NAME"
	if strings.Contains(api, "Driver") {
		role, what, cmd = transport.RoleServerApp, "ServerApp", "flower-certs serverapp"
	}
	f.role, f.api = role, api
	fs.StringVar(&f.ClientCertificate, "client-certificate", "", fmt.Sprintf("PEM %s certificate to present to a SuperLink that requires one (mutual TLS), such as certificates/%ss/NAME.pem from %s", what, f.role, cmd))
	fs.StringVar(&f.ClientKey, "client-key", "", "PEM private key of --client-certificate")
}

// withClientCert adds the client certificate and the role to o, once the
// certificate passed certfile.CheckClient and holds the identity of the
// role the API admits (a file error or another role, naming the flag: exit
// 1). Conflicts with --insecure, and one flag without the other, are usage
// errors (the checks of transport's ValidateClientCert, naming the flags).
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
	o.ClientCertificate, o.ClientKey = f.ClientCertificate, f.ClientKey
	c, err := certfile.CheckClient(f.ClientCertificate, f.ClientKey, time.Now())
	if err != nil {
		flag := "--client-certificate"
		var fe *certfile.FileError
		if errors.As(err, &fe) && fe.Path == f.ClientKey && fe.Path != f.ClientCertificate {
			flag = "--client-key"
		}
		return o, fmt.Errorf("%s: %w", flag, certfix.Reword(err))
	}
	f.identity = ""
	if id, err := transport.IdentityOf(c.Leaf); err == nil {
		if id.Role != f.role {
			return o, fmt.Errorf("--client-certificate %s (%s): it is a %s certificate and this API admits %s certificates (the SuperLink's %s): pass one issued with flower-certs %s NAME",
				f.ClientCertificate, id, transport.RoleName(id.Role), transport.RoleName(f.role), f.api, f.role)
		}
		f.identity = id.String()
	}
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
