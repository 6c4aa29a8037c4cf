//go:build !faultinject

package fault

func hit(string) {}
