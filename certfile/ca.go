package certfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/sepal-fl/sepal/selfsigned"
)

// LoadCA reads a CA certificate (PEM, the first CERTIFICATE block) and its
// private key (PEM: PKCS#8 "PRIVATE KEY", or the older "EC PRIVATE KEY" and
// "RSA PRIVATE KEY"), to issue certificates with. It fails, naming the file, when a file cannot be read
// or parsed, the certificate is not a CA, its key is an RSA key of fewer
// than MinRSABits bits, the key is encrypted, or the key does not match it. The
// errors match the sentinels of Check with errors.Is.
func LoadCA(certFile, keyFile string) (*selfsigned.CA, error) {
	ca, err := loadCA(certFile, keyFile)
	return ca, withPending(err)
}

func loadCA(certFile, keyFile string) (*selfsigned.CA, error) {
	cp, err := readFile(certFile, roleCA)
	if err != nil {
		return nil, err
	}
	kp, err := readFile(keyFile, roleCAKey)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(certFile, roleCA, cp)
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, &FileError{Path: certFile, Role: roleCA, Err: ErrNotCA,
			Detail: fmt.Sprintf("%q is not a CA certificate", cert.Subject.CommonName),
			Fix:    "give the CA certificate (ca.crt), not a server certificate"}
	}
	if err := weakKey(certFile, roleCA, cert.PublicKey); err != nil {
		return nil, err
	}
	key, err := parseKeyPEM(keyFile, roleCAKey, kp)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, &FileError{Path: keyFile, Role: roleCAKey, Err: ErrKeyMismatch,
			Detail: "the key does not match the CA certificate " + certFile,
			Fix:    "give the key that was made with this CA certificate"}
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return nil, err
	}
	return &selfsigned.CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), KeyPEM: keyPEM}, nil
}

// publicKeysEqual reports whether two public keys are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// marshalKey encodes key as PEM PKCS#8 "PRIVATE KEY", the form of the keys
// selfsigned makes.
func marshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
