package nodesig

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

func derSig(r, s *big.Int) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.BytesOrPanic()
}

func p384Key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// agree checks that Verify says what ecdsa.VerifyASN1 says.
func agree(t *testing.T, what string, pub *ecdsa.PublicKey, hash, sig []byte) bool {
	t.Helper()
	want := ecdsa.VerifyASN1(pub, hash, sig)
	if got := Verify(pub, hash, sig); got != want {
		t.Errorf("%s: Verify %v, the standard library %v (hash %x, signature %x)", what, got, want, hash, sig)
	}
	return want
}

// Verify accepts and refuses exactly what the standard library
// does: valid signatures (and their high-s twins), a changed hash, every
// single bit of the signature flipped, values of r and s at and past the
// bounds, and encodings that are not strict DER.
func TestVerifySignatureAgrees(t *testing.T) {
	n := elliptic.P384().Params().N
	one := big.NewInt(1)
	for i := range 40 {
		k := p384Key(t)
		h := sha256.Sum256([]byte{byte(i), 'x'})
		sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
		if err != nil {
			t.Fatal(err)
		}
		if !agree(t, "a valid signature", &k.PublicKey, h[:], sig) {
			t.Fatal("a valid signature was refused")
		}
		var r, s big.Int
		in := cryptobyte.String(sig)
		var inner cryptobyte.String
		in.ReadASN1(&inner, asn1.SEQUENCE)
		inner.ReadASN1Integer(&r)
		inner.ReadASN1Integer(&s)
		agree(t, "high s", &k.PublicKey, h[:], derSig(&r, new(big.Int).Sub(n, &s)))
		bad := h
		bad[i%len(bad)] ^= 1
		if agree(t, "another hash", &k.PublicKey, bad[:], sig) {
			t.Fatal("a signature of another hash was accepted")
		}
		agree(t, "by another key", &p384Key(t).PublicKey, h[:], sig)
		for _, v := range []*big.Int{big.NewInt(0), one, new(big.Int).Sub(n, one), n, new(big.Int).Add(n, one), big.NewInt(-1), new(big.Int).Neg(&r), new(big.Int).Lsh(one, 400)} {
			agree(t, "r = "+v.String(), &k.PublicKey, h[:], derSig(v, &s))
			agree(t, "s = "+v.String(), &k.PublicKey, h[:], derSig(&r, v))
		}
		if i < 4 {
			for bit := range 8 * len(sig) {
				flipped := append([]byte(nil), sig...)
				flipped[bit/8] ^= 1 << (bit % 8)
				agree(t, "a flipped bit", &k.PublicKey, h[:], flipped)
			}
		}
		agree(t, "trailing bytes", &k.PublicKey, h[:], append(append([]byte(nil), sig...), 0))
		agree(t, "empty", &k.PublicKey, h[:], nil)
		agree(t, "a 48-byte hash", &k.PublicKey, append(h[:], h[:16]...), sig)
	}
}

// scalarBase returns x(k·G) for 0 < k < n.
func scalarBase(t *testing.T, k *big.Int) (*big.Int, bool) {
	b := k.FillBytes(make([]byte, 48))
	priv, err := ecdh.P384().NewPrivateKey(b)
	if err != nil {
		return nil, false // k·G is the point at infinity
	}
	return new(big.Int).SetBytes(priv.PublicKey().Bytes()[1:49]), true
}

// The exceptional cases of u1·G + u2·Q, which only the key's owner can
// reach (they need its private key d): partial sums equal to a multiple
// of Q (a doubling inside the addition, which CIRCL before v1.6.3 got
// wrong), and a sum at infinity. For chosen u1 and u2, a signature is
// made that verifies exactly when the sum is right.
func TestVerifySignatureExceptional(t *testing.T) {
	n := elliptic.P384().Params().N
	k := p384Key(t)
	raw, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	d := new(big.Int).SetBytes(raw)
	var cases [][2]*big.Int
	for _, c := range []int64{1, 3, 5, 7, 15, 31} {
		cd := new(big.Int).Mul(big.NewInt(c), d)
		cases = append(cases,
			[2]*big.Int{new(big.Int).Mod(cd, n), big.NewInt(c)},                   // u1·G = u2·Q: a doubling
			[2]*big.Int{new(big.Int).Mod(new(big.Int).Neg(cd), n), big.NewInt(c)}, // u1·G = -u2·Q: infinity
			[2]*big.Int{new(big.Int).Mod(new(big.Int).Lsh(cd, 5), n), big.NewInt(c)},
		)
	}
	for range 20 {
		u1, err1 := rand.Int(rand.Reader, n)
		u2, err2 := rand.Int(rand.Reader, n)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		cases = append(cases, [2]*big.Int{u1, u2})
	}
	for _, c := range cases {
		u1, u2 := c[0], c[1]
		if u1.Sign() == 0 || u2.Sign() == 0 {
			continue
		}
		sum := new(big.Int).Mul(u2, d)
		sum.Add(sum, u1).Mod(sum, n)
		x, finite := scalarBase(t, sum)
		rr := big.NewInt(12345)
		if finite {
			rr = x.Mod(x, n)
		}
		// u2 = r/s, u1 = e/s: s = r/u2, e = u1·s.
		s := new(big.Int).ModInverse(u2, n)
		s.Mul(s, rr).Mod(s, n)
		e := new(big.Int).Mul(u1, s)
		e.Mod(e, n)
		hash := e.FillBytes(make([]byte, 48))
		if ok := agree(t, "u1 "+u1.String()+", u2 "+u2.String(), &k.PublicKey, hash, derSig(rr, s)); ok != finite {
			t.Errorf("the standard library says %v for a sum that is finite %v", ok, finite)
		}
	}
}

// FuzzVerifySignature gives Verify and the standard library
// arbitrary signatures and hashes for one key.
func FuzzVerifySignature(f *testing.F) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	h := sha256.Sum256([]byte("2026-04-01T12:00:00.000000+00:00"))
	sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		f.Fatal(err)
	}
	f.Add(h[:], sig)
	f.Add(h[:], []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01})
	f.Add([]byte{}, sig)
	f.Fuzz(func(t *testing.T, hash, sig []byte) {
		agree(t, "fuzzed", &k.PublicKey, hash, sig)
	})
}

// BenchmarkVerifySignature verifies a Flower 1.29.0 SuperNode's signature
// of a timestamp with a P-384 key, as every Fleet call needs: with the
// standard library and with Verify.
//
//	go test ./internal/nodesig -run '^$' -bench VerifySignature
func BenchmarkVerifySignature(b *testing.B) {
	k := p384Key(b)
	h := sha256.Sum256([]byte("2026-04-01T12:00:00.000000+00:00"))
	sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name   string
		verify func(*ecdsa.PublicKey, []byte, []byte) bool
	}{{"stdlib", ecdsa.VerifyASN1}, {"nodesig", Verify}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				if !v.verify(&k.PublicKey, h[:], sig) {
					b.Fatal("refused")
				}
			}
		})
	}
}
