package certfmt

import (
	"math/big"
	"testing"
)

func TestSerial(t *testing.T) {
	big128, _ := new(big.Int).SetString("c1420a61c2f0daf188bcf30deb1a42cd", 16)
	for _, tc := range []struct {
		n    *big.Int
		want string
	}{
		{nil, ""},
		{big.NewInt(0), "00"},
		{big.NewInt(1), "01"},
		{big.NewInt(0xabc), "0ABC"},
		{big.NewInt(0x1000), "1000"},
		{big.NewInt(-2), "-02"},
		{big128, "C1420A61C2F0DAF188BCF30DEB1A42CD"},
	} {
		if got := Serial(tc.n); got != tc.want {
			t.Errorf("Serial(%v) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// KeyID prints a key identifier as openssl x509 -text does.
func TestKeyID(t *testing.T) {
	for in, want := range map[string]string{"": "", "\x0a": "0A", "\x3f\x2a\x9c": "3F:2A:9C"} {
		if got := KeyID([]byte(in)); got != want {
			t.Errorf("KeyID(%x) = %q, want %q", in, got, want)
		}
	}
}
