package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"
)

// A certificate loaded from storage at start is told to OnEvent as a load,
// with both clients; no order is reported.
func TestOnEventLoad(t *testing.T) {
	for _, client := range []string{ClientCertmagic, ClientAutocert} {
		t.Run(client, func(t *testing.T) {
			storage := t.TempDir()
			seedStorage(t, client, storage, "stored.test")
			var mu sync.Mutex
			var events []Event
			s, err := New(context.Background(), Options{Domains: []string{"stored.test"}, CA: unreachableCA,
				Storage: storage, Client: client, TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second,
				OnEvent: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			mu.Lock()
			defer mu.Unlock()
			if len(events) != 1 || events[0].Kind != EventLoad || events[0].Domain != "stored.test" || events[0].Err != nil || events[0].Time.IsZero() {
				t.Fatalf("events %+v, want one load of stored.test", events)
			}
		})
	}
}

// Before Obtain, GetCertificate's refusal is temporary: a handshake
// observer counts it as "not ready", not as the peer's fault.
func TestNotReadyIsTemporary(t *testing.T) {
	s, _ := newFakeSource(t, nil)
	s.ready.Store(false)
	_, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test", SupportedProtos: []string{"h2"}})
	var tmp interface{ Temporary() bool }
	if !errors.As(err, &tmp) || !tmp.Temporary() {
		t.Fatalf("GetCertificate before Obtain: %v (%T), want a Temporary error", err, err)
	}
}
