package transport

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ClientOptions say how a client app reaches a SuperLink. The zero value
// verifies the server against the system roots under the name dialled.
type ClientOptions struct {
	// RootCertificates is the path of a PEM file with the CA certificates
	// to trust. Empty: the system pool.
	RootCertificates string
	// ServerName is the name the server's certificate must hold. Empty:
	// the host of the address dialled.
	ServerName string
	// Insecure selects plaintext gRPC. It conflicts with RootCertificates
	// and ClientCertificate. Default false: TLS.
	Insecure bool
	// ClientCertificate and ClientKey are the paths of the PEM client
	// certificate (leaf first) and its key that the client presents to a
	// server that asks for one (mutual TLS). Both or neither. Empty: none
	// is presented.
	ClientCertificate, ClientKey string
	// Role is the role the server admits on the API dialled (RoleNode for
	// the Fleet API, RoleServerApp for the Driver API). It only shapes the
	// explanation of a refused client certificate. Empty: unknown.
	Role string
}

func (o ClientOptions) validate() error {
	if o.Insecure && o.RootCertificates != "" {
		return &Error{Kind: KindConfig, Field: "Insecure",
			problem: fmt.Sprintf("ClientOptions.Insecure and ClientOptions.RootCertificates %s conflict", o.RootCertificates),
			fix:     "set RootCertificates for TLS, or Insecure alone for plaintext"}
	}
	return o.ValidateClientCert()
}

// rootsName names where the client's trusted CAs come from, for messages.
func (o ClientOptions) rootsName() string {
	if o.RootCertificates == "" {
		return "the system roots"
	}
	return o.RootCertificates
}

// ClientConfig returns the TLS configuration of a client: TLS 1.2 minimum,
// ALPN "h2", the CAs of o.RootCertificates (or the system pool),
// o.ServerName as the name to verify when set, and the client certificate
// of o.ClientCertificate and o.ClientKey, presented whenever the server
// asks for one (also when its CA is not among those the server names, so
// that the server's refusal says why). It reads the PEM files once, now.
// Errors are *Error of KindConfig naming the file and the field: a file is
// missing or unreadable, empty, or holds no certificate, or the client key
// does not match its certificate; and o.Insecure together with
// o.RootCertificates or a client certificate, or one of ClientCertificate
// and ClientKey without the other.
// Otherwise o.Insecure is not looked at: ClientCredentials is what honours it.
func ClientConfig(o ClientOptions) (*tls.Config, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{ALPNH2},
		ServerName: o.ServerName,
	}
	if o.RootCertificates != "" {
		pool, err := loadRoots(o.RootCertificates)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.ClientCertificate != "" {
		cert, err := loadClientCert(o)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg, nil
}

func loadRoots(path string) (*x509.CertPool, error) {
	bad := func(err error, problem, fix string) *Error {
		return &Error{Kind: KindConfig, Field: "RootCertificates", File: path, err: err,
			problem: "ClientOptions.RootCertificates " + path + ": " + problem, fix: fix}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		what := "cannot read"
		if errors.Is(err, fs.ErrNotExist) {
			what = "no such file"
		}
		return nil, bad(err, what, "pass the CA certificate that issued the server's certificate")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, bad(nil, "the file is empty", "pass the CA certificate (PEM, BEGIN CERTIFICATE)")
	}
	pool := x509.NewCertPool()
	var found []string
	rest := data
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			found = append(found, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, bad(err, fmt.Sprintf("certificate %d does not parse (%v)", n+1, err), "pass a PEM file of CA certificates")
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		got, notKey := "no PEM block", ""
		if len(found) > 0 {
			got = fmt.Sprintf("only %q blocks", found)
			notKey = ", not a key"
		}
		return nil, bad(nil, fmt.Sprintf("no certificate in it (%s)", got), "pass the CA certificate (PEM, BEGIN CERTIFICATE)"+notKey)
	}
	return pool, nil
}

// ClientCredentials returns the gRPC transport credentials of a client:
// insecure (plaintext) credentials when o.Insecure, else TLS with
// ClientConfig(o). With o.ServerName set, gRPC uses it as the authority and
// verifies the certificate against it. Errors are those of ClientConfig.
func ClientCredentials(o ClientOptions) (credentials.TransportCredentials, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Insecure {
		return insecure.NewCredentials(), nil
	}
	cfg, err := ClientConfig(o)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}
