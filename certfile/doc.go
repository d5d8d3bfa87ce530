// Package certfile serves TLS certificates from PEM files, whoever made
// them: it checks them at start, reloads them while serving without ever
// serving a bad or half-written pair, and writes them whole with strict
// modes.
package certfile
