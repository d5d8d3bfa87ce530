package rules

import (
	"slices"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
)

// EachBlob calls fn with every array of rs whose data is BlobMin bytes or
// more, in a fixed order (parameter records by name, then arrays by
// position), with its place pos in that order among all the arrays of rs,
// so that an implementation can store an array apart from its message and
// put it back where it was. Nil records and arrays are skipped (a nil
// array still takes a place).
func EachBlob(rs *flwrproto.RecordSet, fn func(pos int, a *flwrproto.Array)) {
	EachArray(rs, func(pos int, a *flwrproto.Array) {
		if len(a.Data) >= state.BlobMin {
			fn(pos, a)
		}
	})
}

// EachArray calls fn with every non-nil array of rs and its place, in the
// order of EachBlob.
func EachArray(rs *flwrproto.RecordSet, fn func(pos int, a *flwrproto.Array)) {
	if rs == nil || len(rs.Parameters) == 0 {
		return
	}
	keys := make([]string, 0, len(rs.Parameters))
	for k := range rs.Parameters {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	pos := 0
	for _, k := range keys {
		pr := rs.Parameters[k]
		if pr == nil {
			continue
		}
		for _, a := range pr.DataValues {
			if a != nil {
				fn(pos, a)
			}
			pos++
		}
	}
}
