//go:build unix

package acme

import (
	"os"
	"syscall"
)

// ownerUID returns the user id of the file's owner.
func ownerUID(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
