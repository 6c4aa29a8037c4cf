// Package fault is the crash-injection hook of the orchestrator binary. In a
// normal build Hit does nothing. Built with `-tags faultinject`, Hit kills the
// process with SIGKILL when the point named by TANDEM_ORCH_FAULT is reached,
// so tests can crash a real orchestrator between any two steps.
package fault

// EnvVar names the point at which a faultinject build kills itself.
const EnvVar = "TANDEM_ORCH_FAULT"

// Hit marks a fault point.
func Hit(point string) { hit(point) }
