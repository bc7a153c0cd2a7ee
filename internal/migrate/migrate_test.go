package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSteps records every call, fails the step named in fail, and can make
// steps take time.
type fakeSteps struct {
	mu    sync.Mutex
	calls []string
	fail  map[string]error
	delay map[string]time.Duration
	bytes int64
	// imageBytes: what the image step copies.
	imageBytes int64
	ctxErrs    map[string]error // ctx.Err() each step saw
	unlocked   error            // the cause Unlock was given
	onCall     func(step string)
	// committed: RollBack finds the destination committed first.
	committed bool
	// waitCtx: steps that block until their context ends.
	waitCtx map[string]bool
}

func (f *fakeSteps) do(ctx context.Context, step string) error {
	if f.onCall != nil {
		f.onCall(step)
	}
	f.mu.Lock()
	f.calls = append(f.calls, step)
	if f.ctxErrs == nil {
		f.ctxErrs = map[string]error{}
	}
	f.ctxErrs[step] = ctx.Err()
	d, err, wait := f.delay[step], f.fail[step], f.waitCtx[step]
	f.mu.Unlock()
	if wait {
		<-ctx.Done()
		return ctx.Err()
	}
	time.Sleep(d)
	return err
}

func (f *fakeSteps) Lock(ctx context.Context) error    { return f.do(ctx, "lock") }
func (f *fakeSteps) Prepare(ctx context.Context) error { return f.do(ctx, "prepare") }
func (f *fakeSteps) Image(ctx context.Context) (int64, error) {
	return f.imageBytes, f.do(ctx, "image")
}
func (f *fakeSteps) Checkpoint(ctx context.Context) error { return f.do(ctx, "checkpoint") }
func (f *fakeSteps) Transfer(ctx context.Context) (int64, error) {
	return f.bytes, f.do(ctx, "transfer")
}
func (f *fakeSteps) Restore(ctx context.Context) error { return f.do(ctx, "restore") }
func (f *fakeSteps) Fetch(ctx context.Context) error   { return f.do(ctx, "fetch") }
func (f *fakeSteps) Commit(ctx context.Context) error  { return f.do(ctx, "commit") }
func (f *fakeSteps) Abort(ctx context.Context) error   { return f.do(ctx, "abort") }
func (f *fakeSteps) Resume(ctx context.Context) error  { return f.do(ctx, "resume") }
func (f *fakeSteps) RollBack(ctx context.Context, cause error) (bool, error) {
	err := f.do(ctx, "rollback")
	return f.committed && err == nil, err
}
func (f *fakeSteps) Unlock(ctx context.Context, cause error) error {
	f.mu.Lock()
	f.unlocked = cause
	f.mu.Unlock()
	return f.do(ctx, "unlock")
}

func (f *fakeSteps) trace() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, " ")
}

type observed struct {
	phase Phase
	took  time.Duration
}

func record() (*[]observed, Observer) {
	var out []observed
	return &out, func(p Phase, d time.Duration) { out = append(out, observed{p, d}) }
}

func TestRunSuccess(t *testing.T) {
	const d = 15 * time.Millisecond
	f := &fakeSteps{
		bytes: 4242, imageBytes: 777,
		delay: map[string]time.Duration{"image": 4 * d, "checkpoint": d, "transfer": 2 * d, "restore": d},
	}
	obs, observer := record()
	r, err := Run(context.Background(), f, observer)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := f.trace(), "lock image prepare checkpoint transfer restore fetch commit"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if r.Phase != PhaseCommitted {
		t.Errorf("phase = %s, want %s", r.Phase, PhaseCommitted)
	}
	var phases []Phase
	for _, o := range *obs {
		phases = append(phases, o.phase)
	}
	if got, want := fmt.Sprint(phases), fmt.Sprint([]Phase{PhaseLocked, PhaseImageReady, PhasePrepared, PhaseCheckpointed, PhaseTransferred, PhaseRestored, PhaseFetched, PhaseCommitted}); got != want {
		t.Errorf("observed %s, want %s", got, want)
	}
	if r.Bytes != 4242 {
		t.Errorf("bytes = %d, want 4242", r.Bytes)
	}
	if r.Checkpoint < d || r.Transfer < 2*d || r.Restore < d {
		t.Errorf("step times %v/%v/%v below their delays", r.Checkpoint, r.Transfer, r.Restore)
	}
	if sum := r.Checkpoint + r.Transfer + r.Restore; r.Downtime < sum {
		t.Errorf("downtime %v < checkpoint+transfer+restore %v", r.Downtime, sum)
	}
	if r.Total < r.Downtime {
		t.Errorf("total %v < downtime %v", r.Total, r.Downtime)
	}
	// The image copy is its own phase, before the freeze: the downtime
	// and it are disjoint parts of the total.
	if r.ImageBytes != 777 || r.Image < 4*d {
		t.Errorf("image step: %d bytes in %v, want 777 bytes in at least %v", r.ImageBytes, r.Image, 4*d)
	}
	if r.Total < r.Downtime+r.Image {
		t.Errorf("total %v < downtime %v + image %v: the image copy overlapped the freeze", r.Total, r.Downtime, r.Image)
	}
	// The observer hears the same durations the report holds.
	for _, o := range *obs {
		want := map[Phase]time.Duration{PhaseImageReady: r.Image, PhaseCheckpointed: r.Checkpoint, PhaseTransferred: r.Transfer, PhaseRestored: r.Restore}[o.phase]
		if want != 0 && o.took != want {
			t.Errorf("observer got %v for %s, report %v", o.took, o.phase, want)
		}
	}
}

func TestRunNilObserver(t *testing.T) {
	if _, err := Run(context.Background(), &fakeSteps{}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRunFailures(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		failAt    string
		calls     string
		phase     Phase  // report's phase
		lastOK    Phase  // last phase the observer heard
		msg       string // substring of the error
		rolledBak bool
	}{
		{"lock", "lock", "", "", "boom", false},
		// The destination could not get the image: refused before the
		// freeze, nothing to resume.
		{"image", "lock image rollback abort unlock", PhaseRolledBack, PhaseLocked,
			"image on destination: boom; rolled back: the container still runs on the source", true},
		{"prepare", "lock image prepare rollback abort unlock", PhaseRolledBack, PhaseImageReady,
			"prepare destination: boom; rolled back: the container still runs on the source", true},
		{"checkpoint", "lock image prepare checkpoint rollback resume abort unlock", PhaseRolledBack, PhasePrepared,
			"checkpoint: boom; rolled back: the container runs again on the source", true},
		{"transfer", "lock image prepare checkpoint transfer rollback resume abort unlock", PhaseRolledBack, PhaseCheckpointed,
			"transfer: boom; rolled back: the container runs again on the source", true},
		{"restore", "lock image prepare checkpoint transfer restore rollback resume abort unlock", PhaseRolledBack, PhaseTransferred,
			"restore on destination: boom; rolled back: the container runs again on the source", true},
		// After restore the container runs on the destination: no rollback.
		// A post-copy fetch that fails has no source image to go back to.
		{"fetch", "lock image prepare checkpoint transfer restore fetch", PhaseRestored, PhaseRestored,
			"post-copy: boom", false},
		{"commit", "lock image prepare checkpoint transfer restore fetch commit", PhaseFetched, PhaseFetched,
			"commit: boom (the container runs on the destination", false},
	}
	for _, tt := range tests {
		t.Run(tt.failAt, func(t *testing.T) {
			f := &fakeSteps{fail: map[string]error{tt.failAt: boom}}
			obs, observer := record()
			r, err := Run(context.Background(), f, observer)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			if !errors.Is(err, boom) {
				t.Errorf("error %q does not wrap the cause", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
			if got := strings.Contains(err.Error(), "rolled back"); got != tt.rolledBak {
				t.Errorf("error %q: says rolled back = %v, want %v", err, got, tt.rolledBak)
			}
			if got := f.trace(); got != tt.calls {
				t.Errorf("calls = %q, want %q", got, tt.calls)
			}
			if r.Phase != tt.phase {
				t.Errorf("phase = %q, want %q", r.Phase, tt.phase)
			}
			var last Phase
			if n := len(*obs); n > 0 {
				last = (*obs)[n-1].phase
			}
			if last != tt.lastOK {
				t.Errorf("last observed phase %q, want %q", last, tt.lastOK)
			}
			if tt.rolledBak && !errors.Is(f.unlocked, boom) {
				t.Errorf("Unlock got cause %v, want it to wrap %v", f.unlocked, boom)
			}
			if r.Downtime != 0 && tt.failAt != "commit" && tt.failAt != "fetch" {
				t.Errorf("downtime %v reported for a failed migration", r.Downtime)
			}
		})
	}
}

func TestRunRollbackIncomplete(t *testing.T) {
	boom, stuck := errors.New("boom"), errors.New("criu restore failed")
	tests := []struct {
		name    string
		fail    map[string]error
		calls   string
		msgs    []string
		notMsgs []string
	}{
		{"resume fails", map[string]error{"restore": boom, "resume": stuck},
			"lock image prepare checkpoint transfer restore rollback resume abort unlock",
			[]string{"restore on destination: boom", "rollback incomplete", "resume on source: criu restore failed"},
			[]string{"rolled back:"}},
		{"undecided", map[string]error{"restore": boom, "rollback": stuck},
			"lock image prepare checkpoint transfer restore rollback unlock",
			[]string{"restore on destination: boom", "rollback incomplete", "undecided", "criu restore failed"},
			[]string{"resume on source", "rolled back:"}},
		{"unlock fails", map[string]error{"prepare": boom, "unlock": stuck},
			"lock image prepare rollback abort unlock",
			[]string{"prepare destination: boom", "rollback incomplete", "unlock record: criu restore failed"},
			[]string{"rolled back:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSteps{fail: tt.fail}
			r, err := Run(context.Background(), f, nil)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			if got := f.trace(); got != tt.calls {
				t.Errorf("calls = %q, want %q", got, tt.calls)
			}
			for _, m := range tt.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
			for _, m := range tt.notMsgs {
				if strings.Contains(err.Error(), m) {
					t.Errorf("error %q should not say %q", err, m)
				}
			}
			if !errors.Is(err, boom) || !errors.Is(err, stuck) {
				t.Errorf("error %q does not wrap both the cause and the rollback failure", err)
			}
			if r.Phase != PhaseRolledBack {
				t.Errorf("phase = %q, want %q", r.Phase, PhaseRolledBack)
			}
		})
	}
	// Unlock hears about a failed resume too, so the record can say so.
	f := &fakeSteps{fail: map[string]error{"restore": boom, "resume": stuck}}
	Run(context.Background(), f, nil)
	if !errors.Is(f.unlocked, boom) || !errors.Is(f.unlocked, stuck) {
		t.Errorf("Unlock cause = %v, want both the failure and the resume error", f.unlocked)
	}
}

// A migration cancelled mid-way (client gone, agent shutting down) must still
// roll back, with contexts that are not cancelled.
func TestRunCancelledStillRollsBack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &fakeSteps{}
	f.onCall = func(step string) {
		if step == "transfer" {
			cancel()
			f.mu.Lock()
			f.fail = map[string]error{"transfer": context.Canceled}
			f.mu.Unlock()
		}
	}
	r, err := Run(ctx, f, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "rolled back") {
		t.Errorf("error %q does not say rolled back", err)
	}
	if got, want := f.trace(), "lock image prepare checkpoint transfer rollback resume abort unlock"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	for _, step := range []string{"rollback", "abort", "resume", "unlock"} {
		if e := f.ctxErrs[step]; e != nil {
			t.Errorf("%s ran with a dead context: %v", step, e)
		}
	}
	if r.Phase != PhaseRolledBack {
		t.Errorf("phase = %q", r.Phase)
	}
}

// Values carried by the context (trace ids, loggers) reach the rollback.
func TestRunRollbackKeepsContextValues(t *testing.T) {
	type key struct{}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "trace-1"))
	defer cancel()
	f := &fakeSteps{fail: map[string]error{"prepare": errors.New("x")}}
	f.onCall = func(step string) {
		if step == "prepare" {
			cancel()
		}
	}
	s := &valueSteps{fakeSteps: f, key: key{}}
	if _, err := Run(ctx, s, nil); err == nil {
		t.Fatal("Run succeeded")
	}
	if s.seen != "trace-1" || s.seenErr != nil {
		t.Errorf("abort saw value %v, ctx err %v; want trace-1, nil", s.seen, s.seenErr)
	}
}

type valueSteps struct {
	*fakeSteps
	key     any
	seen    any
	seenErr error
}

func (v *valueSteps) Abort(ctx context.Context) error {
	v.seen, v.seenErr = ctx.Value(v.key), ctx.Err()
	return v.fakeSteps.Abort(ctx)
}

// A destination that cannot be told about the rollback does not keep the
// container down: the rollback stands, and says so.
func TestRunAbortFailsRollbackStands(t *testing.T) {
	boom, lost := errors.New("boom"), errors.New("no route to host")
	f := &fakeSteps{fail: map[string]error{"transfer": boom, "abort": lost}}
	r, err := Run(context.Background(), f, nil)
	if err == nil {
		t.Fatal("Run succeeded")
	}
	if got, want := f.trace(), "lock image prepare checkpoint transfer rollback resume abort unlock"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	for _, m := range []string{"transfer: boom", "rolled back: the container runs again on the source", "abort on destination: no route to host"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q lacks %q", err, m)
		}
	}
	if strings.Contains(err.Error(), "incomplete") {
		t.Errorf("error %q calls the rollback incomplete", err)
	}
	if r.Phase != PhaseRolledBack {
		t.Errorf("phase = %q", r.Phase)
	}
}

// The destination committed but its answer was lost: the record says so,
// and the migration stands (no resume on the source: that would be a
// second copy).
func TestRunLostRestoreReplyCommits(t *testing.T) {
	f := &fakeSteps{fail: map[string]error{"restore": errors.New("connection reset")}, committed: true}
	obs, observer := record()
	r, err := Run(context.Background(), f, observer)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := f.trace(), "lock image prepare checkpoint transfer restore rollback fetch commit"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if r.Phase != PhaseCommitted || !r.ReplyLost {
		t.Errorf("phase %q, reply lost %v; want committed, true", r.Phase, r.ReplyLost)
	}
	if r.Downtime <= 0 {
		t.Error("no downtime reported")
	}
	var phases []Phase
	for _, o := range *obs {
		phases = append(phases, o.phase)
	}
	if got, want := fmt.Sprint(phases), fmt.Sprint([]Phase{PhaseLocked, PhaseImageReady, PhasePrepared, PhaseCheckpointed, PhaseTransferred, PhaseRestored, PhaseFetched, PhaseCommitted}); got != want {
		t.Errorf("observed %s, want %s", got, want)
	}
}

// A budget that runs out cancels the step under way and rolls back, with
// the budget named in the error.
func TestRunBudgets(t *testing.T) {
	for _, tt := range []struct {
		name   string
		budget Budget
		step   string
		msg    string
	}{
		{"freeze budget in transfer", Budget{Freeze: 50 * time.Millisecond}, "transfer", "--freeze-budget"},
		{"freeze budget in restore", Budget{Freeze: 50 * time.Millisecond}, "restore", "--freeze-budget"},
		{"timeout in prepare", Budget{Timeout: 50 * time.Millisecond}, "prepare", "--timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSteps{waitCtx: map[string]bool{tt.step: true}}
			t0 := time.Now()
			r, err := RunBudget(context.Background(), f, nil, tt.budget)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			if time.Since(t0) > 5*time.Second {
				t.Errorf("took %v", time.Since(t0))
			}
			if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "rolled back") {
				t.Errorf("error %q: want the budget (%s) named and a rollback", err, tt.msg)
			}
			if r.Phase != PhaseRolledBack {
				t.Errorf("phase = %q", r.Phase)
			}
			for _, step := range []string{"rollback", "abort", "unlock"} {
				if e := f.ctxErrs[step]; e != nil {
					t.Errorf("%s ran with a dead context: %v", step, e)
				}
			}
		})
	}
	// Within budget: nothing changes.
	f := &fakeSteps{}
	if _, err := RunBudget(context.Background(), f, nil, Budget{Timeout: time.Minute, Freeze: time.Minute}); err != nil {
		t.Fatal(err)
	}
}
