//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package certfile

// lockDir does nothing where flock does not exist: writers of one folder
// are not serialized there.
func lockDir(string) (func(), error) { return func() {}, nil }
