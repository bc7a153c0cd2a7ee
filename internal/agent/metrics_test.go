package agent

import (
	"errors"
	"testing"

	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/migrate"
)

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		phase migrate.Phase
		err   error
		want  string
	}{
		{migrate.PhaseCommitted, nil, metrics.OutcomeCommitted},
		{migrate.PhaseRolledBack, errors.New("restore on destination: ...; rolled back"), metrics.OutcomeRolledBack},
		{"", errors.New("container web: an operation is under way: busy"), metrics.OutcomeFailed},
		{migrate.PhaseRestored, errors.New("post-copy: the source's page server: ..."), metrics.OutcomeFailed},
	} {
		if got := outcome(migrate.Report{Phase: tc.phase}, tc.err); got != tc.want {
			t.Errorf("outcome(phase %q, %v) = %q, want %q", tc.phase, tc.err, got, tc.want)
		}
	}
}

func TestNextPhase(t *testing.T) {
	for _, tc := range []struct {
		done migrate.Phase
		s    migrate.Strategy
		want string
	}{
		{migrate.PhaseLocked, migrate.StopAndCopy, "image"},
		{migrate.PhaseImageReady, migrate.StopAndCopy, "preparing"},
		{migrate.PhasePrepared, migrate.StopAndCopy, "checkpointing"},
		{migrate.PhaseCheckpointed, migrate.StopAndCopy, "transferring"},
		{migrate.PhaseTransferred, migrate.StopAndCopy, "restoring"},
		{migrate.PhaseRestored, migrate.StopAndCopy, "committing"},
		{migrate.PhaseRestored, migrate.PostCopy, "fetching"},
		{migrate.PhaseFetched, migrate.PostCopy, "committing"},
	} {
		if got := nextPhase(tc.done, tc.s); got != tc.want {
			t.Errorf("after %s (%s): %q, want %q", tc.done, tc.s, got, tc.want)
		}
	}
}
