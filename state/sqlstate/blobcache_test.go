package sqlstate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCacheLoadOnce: callers that ask at once for content the cache
// lacks share one read; when that read fails, the next caller reads.
func TestCacheLoadOnce(t *testing.T) {
	c := newBlobCache(time.Now)
	h := sum{1}
	var reads atomic.Int32
	fail := errors.New("the database went away")
	read := func() ([]byte, error) {
		if reads.Add(1) == 1 {
			time.Sleep(50 * time.Millisecond)
			return nil, fail
		}
		time.Sleep(50 * time.Millisecond)
		return make([]byte, 1<<20), nil
	}
	if _, err := c.load(context.Background(), h, read); err != fail {
		t.Fatalf("the first load: %v, want its read's error", err)
	}
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := c.load(context.Background(), h, read)
			if err != nil {
				t.Error(err)
			}
			got[i] = d
		}()
	}
	wg.Wait()
	if n := reads.Load(); n != 2 {
		t.Fatalf("%d reads, want 2: the failed one, then one for 8 callers at once", n)
	}
	for _, d := range got {
		if len(d) != 1<<20 || &d[0] != &got[0][0] {
			t.Fatal("the callers did not all get the one copy read")
		}
	}
}
