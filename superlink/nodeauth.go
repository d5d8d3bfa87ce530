package superlink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/nodesig"
	"github.com/sepal-fl/sepal/state"
)

// Flower 1.29.0's node authentication (py/flwr/common/constant.py and
// node_auth_server_interceptor.py): every Fleet call carries the node's
// public key (PEM, SubjectPublicKeyInfo), an ISO 8601 timestamp and an
// ECDSA-SHA256 signature (DER) of that timestamp.
const (
	PublicKeyHeader = "flwr-public-key-bin"
	TimestampHeader = "flwr-timestamp"
	SignatureHeader = "flwr-signature-bin"
	// TimestampTolerance is how old a signed timestamp may be;
	// SystemTimeTolerance how far it may lie in the future (clock drift),
	// and is added to the age too.
	TimestampTolerance  = 300 * time.Second
	SystemTimeTolerance = 5 * time.Second
)

// nodeAuth checks the node signatures of Fleet calls against a LinkState.
type nodeAuth struct {
	s   state.LinkState
	now func() time.Time
}

// verify checks the signature metadata of ctx and returns the public key
// that signed, and the node that holds it (known false: none). With a
// claimed node id (bind), that id must be the node that holds the key. Every failure is Unauthenticated, in Flower's
// words. A signature that served a call of a registered key before is
// refused as a replay (state.LinkState.UseSignature: Flower accepts it
// again and again for 300 s, for any call, since it signs the time
// alone); one too old for the state to tell gets Unavailable, which a
// SuperNode answers by signing again.
func (a nodeAuth) verify(ctx context.Context, bind bool, claimed uint64) (pk []byte, node uint64, known bool, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	one := func(k string) []byte {
		if v := md.Get(k); len(v) == 1 {
			return []byte(v[0])
		}
		return nil
	}
	pk, ts, sig := one(PublicKeyHeader), one(TimestampHeader), one(SignatureHeader)
	if len(pk) == 0 || len(ts) == 0 || len(sig) == 0 {
		return nil, 0, false, status.Error(codes.Unauthenticated, "Missing authentication metadata")
	}
	pub, err := parseNodeKey(pk)
	if err != nil {
		return nil, 0, false, status.Errorf(codes.Unauthenticated, "Invalid public key: %v", err)
	}
	h := sha256.Sum256(ts)
	if !nodesig.Verify(pub, h[:], sig) {
		return nil, 0, false, status.Error(codes.Unauthenticated, "Invalid signature")
	}
	at, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return nil, 0, false, status.Error(codes.Unauthenticated, "Invalid timestamp")
	}
	if age := a.now().Sub(at); age <= -SystemTimeTolerance || age >= TimestampTolerance+SystemTimeTolerance {
		return nil, 0, false, status.Error(codes.Unauthenticated, "Invalid timestamp")
	}
	id, ok, err := a.s.NodeOfKey(ctx, pk)
	if err != nil {
		return nil, 0, false, err
	}
	if bind && (!ok || id != claimed) {
		return nil, 0, false, status.Error(codes.Unauthenticated, "Invalid node ID")
	}
	if ok {
		signedAt := float64(at.UnixNano()) / 1e9
		until := signedAt + (TimestampTolerance + SystemTimeTolerance).Seconds()
		if err := a.s.UseSignature(ctx, signatureTag(pk, ts, sig), signedAt, until); err != nil {
			return nil, 0, false, err
		}
	}
	return pk, id, ok, nil
}

// signatureTag names a signature for UseSignature: the SHA-256 of the key,
// the timestamp signed and the signature's r, which its signer's random
// nonce makes new each time. The s half is left out: (r, n-s) is as valid
// as (r, s), so a replay could change it without the key.
func signatureTag(pk, ts, sig []byte) []byte {
	var rs struct{ R, S *big.Int }
	r := sig
	if rest, err := asn1.Unmarshal(sig, &rs); err == nil && len(rest) == 0 && rs.R != nil {
		r = rs.R.Bytes()
	}
	h := sha256.New()
	for _, p := range [][]byte{pk, ts, r} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}

// parseNodeKey reads a node's public key: PEM SubjectPublicKeyInfo of an
// EC key on a NIST curve (Flower's SuperNodes make SECP384R1 keys).
func parseNodeKey(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(bytes.TrimSpace(b))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errNotPEMKey
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errNotEC
	}
	return pub, nil
}

var (
	errNotPEMKey = errors.New("not a PEM PUBLIC KEY block")
	errNotEC     = errors.New("not an elliptic-curve key")
)

// KeyFingerprint is a short fingerprint of a node's public key (PEM, as
// Flower 1.29.0 SuperNodes send it and the Control API registers it): the
// first 16 characters of OpenSSH's SHA-256 fingerprint, "SHA256:"
// included, so that an operator can match it against
// `ssh-keygen -lf KEY.pub` of the key given to `flwr supernode register`.
// A key that does not parse gets "raw:" and 16 hex digits of the SHA-256 of
// its bytes. It never fails.
func KeyFingerprint(publicKey []byte) string {
	if pub, err := parseNodeKey(publicKey); err == nil {
		if k, err := ssh.NewPublicKey(pub); err == nil {
			fp := ssh.FingerprintSHA256(k)
			return fp[:min(len(fp), len("SHA256:")+16)]
		}
	}
	h := sha256.Sum256(publicKey)
	return "raw:" + hex.EncodeToString(h[:8])
}
