package superlink

import (
	"strings"
	"testing"
)

// The fingerprint of a P-384 key (what Flower's SuperNodes make) is the
// prefix of what OpenSSH prints for it: the expected value was printed by
//
//	ssh-keygen -i -m PKCS8 -f pub.pem > pub.ssh && ssh-keygen -lf pub.ssh
//	384 SHA256:Fuq4fcw+b7XDRb/lV1IJqIFIgB3HwpwyGyfs4Qag5FU no comment (ECDSA)
func TestKeyFingerprint(t *testing.T) {
	const pub = `-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE3ltuE2Iy+w0EMvyX9XGkRoKEpWiZhrDr
eQL+cNS5B2MnATWeWH7EnLqQn2wmOEPHKis3hTTLFQoMIQUMWztfTeTG9BSWBVk5
2vAuD4hF5OFFUYkmvreGP/jV3XO4Md4Z
-----END PUBLIC KEY-----
`
	if got, want := KeyFingerprint([]byte(pub)), "SHA256:Fuq4fcw+b7XDRb/l"; got != want {
		t.Errorf("KeyFingerprint = %q, want %q (the prefix of ssh-keygen -lf's)", got, want)
	}
	// Surrounding white space, as a key read from a file has, changes nothing.
	if got := KeyFingerprint([]byte("\n" + pub + "\n")); got != "SHA256:Fuq4fcw+b7XDRb/l" {
		t.Errorf("with white space around it: %q", got)
	}
	// A key of another signer differs; bytes that are no key get a raw
	// digest, never an error or a panic.
	if other := KeyFingerprint(newSigner(t).pem); other == "SHA256:Fuq4fcw+b7XDRb/l" || !strings.HasPrefix(other, "SHA256:") || len(other) != 23 {
		t.Errorf("another key's fingerprint %q", other)
	}
	for _, junk := range []string{"", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} {
		if got := KeyFingerprint([]byte(junk)); !strings.HasPrefix(got, "raw:") || len(got) != 20 {
			t.Errorf("KeyFingerprint(%q) = %q, want raw: and 16 hex digits", junk, got)
		}
	}
}
