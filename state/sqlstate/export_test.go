package sqlstate

// Crash ends s as a killed process would: its connections close, and
// nothing of Close's bookkeeping is done (its replica row stays; on
// PostgreSQL its lock goes with its connection). Close is a no-op after.
func Crash(s *State) {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.locker != nil {
			s.locker.close()
		}
		s.db.Close()
		if s.onClose != nil {
			s.onClose()
		}
	})
}
