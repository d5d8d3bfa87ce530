package superlink

import "github.com/sepal-fl/sepal/state"

// State returns the state the SuperLink serves from (Options.State, or the
// in-memory state New made), for metrics and the status page, which read
// it through its observation methods.
func (s *SuperLink) State() state.State { return s.state }
