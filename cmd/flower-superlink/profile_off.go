//go:build !sepal_pprof

package main

// stopProfiles ends the profiles of a -tags sepal_pprof build (profile.go);
// here there are none.
func stopProfiles() {}
