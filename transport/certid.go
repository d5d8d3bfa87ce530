package transport

import "github.com/sepal-fl/sepal/internal/certfmt"

// CertificateID names the connection's client certificate by its serial
// and issuer (certfmt.CertID), as a CRL of its issuer would: what the
// SuperLink records with a node, so that revoking the certificate finds
// the nodes it created.
func (ci *ClientInfo) CertificateID() string {
	return certfmt.CertIDOf(ci.State.PeerCertificates[0])
}
