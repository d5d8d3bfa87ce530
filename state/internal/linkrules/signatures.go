package linkrules

import (
	"math"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Signatures remembers, in one process, the node signatures that served
// calls, until they could be accepted no more (LinkState.UseSignature of a
// store that one process owns). It holds at most max of them: past it,
// those that expire first are forgotten, and from then on a signature that
// would expire as early is refused as too old to tell from a replay. Safe
// for concurrent use.
type Signatures struct {
	max int

	mu      sync.Mutex
	floor   float64            // refuse signatures that expire at or before it
	seen    map[[32]byte]int64 // tag -> its bucket
	buckets map[int64][][32]byte
	oldest  int64 // no bucket is older
}

// NewSignatures returns an empty Signatures of at most max tags.
func NewSignatures(max int) *Signatures {
	return &Signatures{max: max, seen: map[[32]byte]int64{}, buckets: map[int64][][32]byte{}, oldest: math.MaxInt64}
}

// ErrReplayed is the refusal of a signature that served a call before.
var ErrReplayed = status.Error(codes.Unauthenticated, "Invalid signature: it served another call already (a replay); a SuperNode signs each call anew")

// ErrTooOld is the refusal of a signature older than what the store
// remembers: a SuperNode retries, signing again.
var ErrTooOld = status.Error(codes.Unavailable, "the signature is older than the signatures this SuperLink remembers, so it cannot tell it from a replay: sign the call again")

// Use records tag, of a signature acceptable until until, at now: nil
// when it is new, ErrReplayed when it was used, ErrTooOld when it expires
// too early to tell.
func (s *Signatures) Use(tag []byte, until, now float64) error {
	var k [32]byte
	copy(k[:], tag)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if until <= s.floor {
		return ErrTooOld
	}
	if _, ok := s.seen[k]; ok {
		return ErrReplayed
	}
	b := int64(math.Ceil(until))
	s.seen[k] = b
	s.buckets[b] = append(s.buckets[b], k)
	s.oldest = min(s.oldest, b)
	for len(s.seen) > s.max {
		s.drop(s.oldest)
		s.floor = max(s.floor, float64(s.oldest))
		s.next()
	}
	return nil
}

// Len is how many tags are held.
func (s *Signatures) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// expire forgets the tags of signatures no longer acceptable at now.
func (s *Signatures) expire(now float64) {
	for len(s.buckets) > 0 && float64(s.oldest) < now {
		s.drop(s.oldest)
		s.next()
	}
}

// drop forgets bucket b.
func (s *Signatures) drop(b int64) {
	for _, k := range s.buckets[b] {
		delete(s.seen, k)
	}
	delete(s.buckets, b)
}

// next finds the oldest bucket again after one was dropped: the buckets
// span at most the time a signature is acceptable, so the walk is short.
func (s *Signatures) next() {
	if len(s.buckets) == 0 {
		s.oldest = math.MaxInt64
		return
	}
	for b := s.oldest + 1; b <= s.oldest+1024; b++ {
		if _, ok := s.buckets[b]; ok {
			s.oldest = b
			return
		}
	}
	s.oldest = math.MaxInt64
	for b := range s.buckets {
		s.oldest = min(s.oldest, b)
	}
}
