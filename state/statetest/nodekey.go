package statetest

import (
	"archive/zip"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// NodeKey makes a Flower 1.29.0 SuperNode's key pair (SECP384R1) and
// returns it with its public key as the SuperNode sends it (PEM
// SubjectPublicKeyInfo).
func NodeKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// SignTime signs at as a Flower 1.29.0 SuperNode signs each call: the
// timestamp it sends (ISO 8601, microseconds, +00:00) and the ASN.1 ECDSA
// signature of its SHA-256.
func SignTime(t testing.TB, k *ecdsa.PrivateKey, at time.Time) (ts string, sig []byte) {
	t.Helper()
	ts = at.UTC().Format("2006-01-02T15:04:05.000000+00:00")
	h := sha256.Sum256([]byte(ts))
	sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	return ts, sig
}

// Malleate returns the other valid encoding of the ASN.1 ECDSA signature
// sig of a P-384 key: (r, n-s), which a replay can send without the key.
func Malleate(t testing.TB, sig []byte) []byte {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &rs); err != nil {
		t.Fatal(err)
	}
	rs.S = new(big.Int).Sub(elliptic.P384().Params().N, rs.S)
	out, err := asn1.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FlwrFab is a FAB as flwr run sends it: a zip with a pyproject.toml
// naming the app name.
func FlwrFab(t testing.TB, name string) *flwr129.Fab {
	t.Helper()
	var b bytes.Buffer
	z := zip.NewWriter(&b)
	w, err := z.Create("pyproject.toml")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "[project]\nname = %q\nversion = \"1.0.0\"\n[tool.flwr.app]\npublisher = \"test\"\n", name)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return &flwr129.Fab{HashStr: Hex256(b.Bytes()), Content: b.Bytes()}
}
