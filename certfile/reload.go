package certfile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// reloader serves the last good value read from a set of files: it reads
// them (read), and replaces the served value only by one that passes check.
// It is the reload machinery FileSource (a certificate and key) and
// ClientCAFile (client CAs and a CRL) share.
//
// A failure is logged (failed) once per distinct content of the files, when
// two polls in a row find the same bad content (so files replaced one at a
// time, or a file being written in place, are not reported), or at once on
// Reload. Once a failure was logged, the next good reload calls
// recovered (files back to the served content, or new ones about to be
// served). Content that failed with an error for which retry
// reports true (a certificate not valid yet, which time may fix) is checked
// again on every poll.
//
// All methods are safe for concurrent use; the hooks run with mu held.
type reloader[C interface{ equal(C) bool }, V any] struct {
	read  func() (C, error)
	check func(C, time.Time) (*V, error)
	now   func() time.Time
	poll  time.Duration

	// swapped is called once v is served, read from c; failed when a
	// failure is to be logged; recovered at the first good reload after
	// a logged failure (unchanged: the files are back to the served
	// content; else swapped follows); idle after every attempt that
	// served nothing new (FileSource logs an expired certificate there).
	// retry and recovered may be nil.
	swapped   func(c C, v *V, trigger string)
	failed    func(trigger string, err error)
	recovered func(trigger string, unchanged bool)
	idle      func(now time.Time)
	retry     func(err error) bool
	// attempted, if set, hears every value served (err nil), the files
	// back to the served content after a logged failure (err nil), and
	// every failure that is logged or was asked for (Reload),
	// for metrics.
	attempted func(trigger string, err error)

	cur atomic.Pointer[V]

	mu         sync.Mutex // serializes reloads and guards the fields below
	loaded     C          // the content of the served value
	failedC    C          // the content that last failed check
	failedRead bool       // the last failure was reading the files
	failedErr  error      // why the last attempt failed, nil after a success
	logged     bool       // failedErr was logged
	reported   bool       // a failure was logged since the files were last good
}

// start reads and checks the files once, serves the value and returns it;
// the error of read or check otherwise. It is the constructor's first load.
func (r *reloader[C, V]) start() (*V, error) {
	c, err := r.read()
	if err != nil {
		return nil, err
	}
	v, err := r.check(c, r.now())
	if err != nil {
		return nil, err
	}
	r.swap(c, v, "start")
	return v, nil
}

// Run polls the files every poll interval until ctx ends, then returns nil.
// A reload on demand (a command's SIGHUP handler) is Reload's.
func (r *reloader[C, V]) Run(ctx context.Context) error {
	t := time.NewTicker(r.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.reload("poll", false)
		}
	}
}

// reload is one attempt. An explicit attempt (Reload) always checks
// and logs; a poll skips content that already failed (unless retry says
// time may fix it).
func (r *reloader[C, V]) reload(trigger string, explicit bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	c, err := r.read()
	if err == nil && c.equal(r.loaded) {
		if r.reported {
			// A failure was reported and the files are back to what is
			// served (say, a bad file was restored): say it is over.
			if r.recovered != nil {
				r.recovered(trigger, true)
			}
			r.attempt(trigger, nil)
		}
		r.failedRead, r.failedErr, r.logged, r.reported = false, nil, false, false
		r.idle(now)
		return nil
	}
	// same: the files are as they were at the last failure (the same
	// content, or the same error reading them).
	same := r.failedErr != nil && (err == nil && !r.failedRead && c.equal(r.failedC) ||
		err != nil && r.failedRead && err.Error() == r.failedErr.Error())
	if same && !explicit && (r.retry == nil || !r.retry(r.failedErr)) {
		if r.logOnce(trigger) {
			r.attempt(trigger, r.failedErr)
		}
		return r.failedErr
	}
	read := err == nil
	var v *V
	if read {
		v, err = r.check(c, now)
	}
	if err != nil {
		if !same {
			r.failedC, r.failedRead, r.logged = c, !read, false
		}
		r.failedErr = err
		// A poll reports a failure when the next poll finds the files
		// unchanged: files replaced one at a time, or a file written in
		// place, are complete by then and never reported.
		if explicit || same {
			if r.logOnce(trigger) || explicit {
				r.attempt(trigger, err)
			}
		}
		r.idle(now)
		return err
	}
	r.swap(c, v, trigger)
	return nil
}

// logOnce reports the current failure unless it was reported, and says
// whether it reported it now. r.mu is held.
func (r *reloader[C, V]) logOnce(trigger string) bool {
	if r.logged {
		return false
	}
	r.logged, r.reported = true, true
	r.failed(trigger, r.failedErr)
	return true
}

// attempt tells attempted, if set, of an outcome. r.mu is held.
func (r *reloader[C, V]) attempt(trigger string, err error) {
	if r.attempted != nil {
		r.attempted(trigger, err)
	}
}

// swap serves v, read as c. r.mu is held (or r is new).
func (r *reloader[C, V]) swap(c C, v *V, trigger string) {
	var zero C
	if r.reported && r.recovered != nil {
		r.recovered(trigger, false)
	}
	r.cur.Store(v)
	r.loaded, r.failedC, r.failedRead, r.failedErr, r.logged, r.reported = c, zero, false, nil, false, false
	r.swapped(c, v, trigger)
	r.attempt(trigger, nil)
}

// sourceDefaults checks and fills the options every reloading source
// shares: a negative poll interval is an error; zero values become
// DefaultPollInterval, time.Now and slog.Default().
func sourceDefaults(poll *time.Duration, now *func() time.Time, log **slog.Logger) error {
	if *poll < 0 {
		return fmt.Errorf("PollInterval %v is negative", *poll)
	}
	if *poll == 0 {
		*poll = DefaultPollInterval
	}
	if *now == nil {
		*now = time.Now
	}
	if *log == nil {
		*log = slog.Default()
	}
	return nil
}

// worded returns err, or the *FileError it is, with the remedies of its fix
// in the words of words (nil: err).
func worded(err error, words func(Remedy, string) string) error {
	var fe *FileError
	if words == nil || !errors.As(err, &fe) || error(fe) != err {
		return err
	}
	return fe.Worded(words)
}

// errNotYetValid reports whether err says a certificate is not valid yet,
// which time may fix without a change to the files.
func errNotYetValid(err error) bool { return errors.Is(err, ErrNotYetValid) }
