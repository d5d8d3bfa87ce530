package acme

import "time"

// Kinds of Event.
const (
	// EventObtain: a certificate was ordered for a domain that had none.
	EventObtain = "obtain"
	// EventRenew: a certificate was ordered to replace one close to expiry.
	EventRenew = "renew"
	// EventLoad: a valid certificate was loaded from storage: at start,
	// or later when another process sharing the storage renewed it.
	EventLoad = "load"
)

// Event is what a Source tells Options.OnEvent: an ACME order that
// succeeded or failed, or a certificate loaded from storage.
type Event struct {
	Kind   string // EventObtain, EventRenew or EventLoad
	Domain string
	// Err is nil on success, else the CA's or the client's error (an
	// attempt that failed; certmagic retries it).
	Err  error
	Time time.Time
}

// emit calls o.OnEvent, if set.
func (o *Options) emit(kind, domain string, err error) {
	if o.OnEvent != nil {
		o.OnEvent(Event{Kind: kind, Domain: domain, Err: err, Time: time.Now()})
	}
}

// notReadyError is GetCertificate's error before the certificates are in.
// Temporary tells a handshake observer that it is no fault of the peer
// (transport counts it as not ready).
type notReadyError struct{}

func (notReadyError) Error() string {
	return "the certificates are still being obtained; try again shortly"
}

func (notReadyError) Temporary() bool { return true }
