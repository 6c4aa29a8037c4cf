// Package fault is the crash-injection hook of the orchestrator binary. In a
// normal build Hit does nothing. Built with `-tags faultinject`, Hit kills the
// process with SIGKILL when the point named by TANDEM_ORCH_FAULT is reached,
// so tests can crash a real orchestrator between any two steps.
package fault

// EnvVar names the point at which a faultinject build kills itself.
const EnvVar = "TANDEM_ORCH_FAULT"

// Hit marks a fault point.
func Hit(point string) { hit(point) }

// At marks a fault point and then asks hook (a test's in-process fault
// injector, may be nil): a non-nil error aborts the caller there, as a crash
// would.
func At(hook func(point string) error, point string) error {
	hit(point)
	if hook == nil {
		return nil
	}
	return hook(point)
}
