package memlink

// SetObjectFileMin sets the size from which s keeps contents in files, so
// that tests can send small objects there.
func SetObjectFileMin(s *Store, n int) { s.files.min = n }

// ObjectShards is how many object files a store writes to.
const ObjectShards = objectShards
