package acme

// Serving a certificate that another process renewed in the storage they
// share. certmagic's own maintenance reloads from storage only when the
// certificate it serves enters its own renewal window (it then finds the
// renewed one in storage, or waits on the renewing replica's lock and
// finds it after); replicas whose windows differ (ARI picks a time per
// certificate, a replica may have started later) would serve the old
// certificate until then. The loop here bounds that by
// Options.StorageCheckInterval, at the cost of one small Load per domain
// per interval.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// syncLoop is the background check of storage for newer certificates.
type syncLoop struct {
	stopc chan struct{}
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	lastErr map[string]string // domain -> last failure logged, so each is logged once
}

func (b *certmagicBackend) startSync(o Options) {
	b.sync.stopc = make(chan struct{})
	b.sync.done = make(chan struct{})
	b.sync.lastErr = map[string]string{}
	go func() {
		defer close(b.sync.done)
		t := time.NewTicker(o.StorageCheckInterval)
		defer t.Stop()
		for {
			select {
			case <-b.sync.stopc:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), o.StorageCheckInterval)
			for _, d := range o.Domains {
				b.syncDomain(ctx, d, o)
			}
			cancel()
		}
	}()
}

func (b *certmagicBackend) stopSync() {
	b.sync.once.Do(func() {
		if b.sync.stopc != nil {
			close(b.sync.stopc)
			<-b.sync.done
		}
	})
}

// syncDomain serves the certificate for domain that storage holds when it
// differs from the one in memory and expires later: it is cached, then the
// older ones are dropped from the cache, so handshakes switch at once and
// never meet a moment without a certificate. A domain not obtained yet
// (before Obtain) is left alone.
func (b *certmagicBackend) syncDomain(ctx context.Context, domain string, o Options) {
	cached := b.cache.AllMatchingCertificates(domain)
	if len(cached) == 0 {
		return
	}
	var newest *x509.Certificate
	for _, c := range cached {
		if c.Leaf != nil && (newest == nil || c.Leaf.NotAfter.After(newest.NotAfter)) {
			newest = c.Leaf
		}
	}
	key := certmagic.StorageKeys.SiteCert(b.iss.IssuerKey(), domain)
	data, err := b.cfg.Storage.Load(ctx, key)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			b.syncFailed(domain, slog.LevelWarn, "cannot check storage for a renewed certificate; serving the current one", err, o)
		}
		return
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return
	}
	for _, c := range cached {
		if len(c.Certificate.Certificate) > 0 && bytes.Equal(c.Certificate.Certificate[0], block.Bytes) {
			b.syncOK(domain)
			return // already served
		}
	}
	stored, err := x509.ParseCertificate(block.Bytes)
	if err != nil || newest == nil || !stored.NotAfter.After(newest.NotAfter) {
		return // not newer: our own renewal in flight, or an older one
	}
	cert, err := b.cfg.CacheManagedCertificate(ctx, domain)
	if err != nil {
		// Most often a renewal being written (certificate stored, key not
		// yet); the next check finds both.
		b.syncFailed(domain, slog.LevelInfo, "the renewed certificate in storage is not usable yet; serving the current one", err, o)
		return
	}
	if cert.Leaf == nil || !cert.Leaf.NotAfter.After(newest.NotAfter) {
		return
	}
	var old []string
	for _, c := range b.cache.AllMatchingCertificates(domain) {
		if c.Hash() != cert.Hash() {
			old = append(old, c.Hash())
		}
	}
	b.cache.Remove(old)
	b.syncOK(domain)
	o.emit(EventLoad, domain, nil) // renewed by another process: a load here
	o.Logger.Info("serving a certificate renewed by another process sharing the storage", "domain", domain,
		"serial", certfmt.Serial(cert.Leaf.SerialNumber), "expiry", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"previous_serial", certfmt.Serial(newest.SerialNumber))
}

func (b *certmagicBackend) syncFailed(domain string, level slog.Level, msg string, err error, o Options) {
	b.sync.mu.Lock()
	repeated := b.sync.lastErr[domain] == err.Error()
	b.sync.lastErr[domain] = err.Error()
	b.sync.mu.Unlock()
	if !repeated {
		o.Logger.Log(context.Background(), level, msg, "domain", domain, "error", err.Error())
	}
}

func (b *certmagicBackend) syncOK(domain string) {
	b.sync.mu.Lock()
	delete(b.sync.lastErr, domain)
	b.sync.mu.Unlock()
}
