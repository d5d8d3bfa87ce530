// Command flower-superlink serves the Flower 1.8.0 Fleet and Driver APIs over TLS.
package main

import (
	"fmt"
	"os"
)

func main() {
	_ = registerACMEFlags
	fmt.Fprintln(os.Stderr, "flower-superlink: not built yet")
	os.Exit(1)
}
