// Command tandem-orchestrator accepts jobs over gRPC, keeps them in NATS
// JetStream queues and runs them on the compute service. Run with --help for
// flags; every flag is also a TANDEM_ORCH_* environment variable.
// `tandem-orchestrator token create|list|revoke` manages API tokens.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
	"github.com/tandem/tandem/orchestrator-go/internal/telemetry"
	"github.com/tandem/tandem/orchestrator-go/internal/tokencmd"
)

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "token" {
		return tokencmd.Run(os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
	}
	if len(os.Args) > 1 && os.Args[1] == "dev-certs" {
		return devCerts(os.Args[2:], os.Stderr)
	}
	cfg, err := config.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tandem-orchestrator:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	host, _ := os.Hostname()
	stopTracing, err := telemetry.Setup(ctx, "tandem-orchestrator", fmt.Sprintf("%s-%d", host, os.Getpid()), log)
	if err != nil {
		log.Error("tracing set-up failed", "error", err)
		return 1
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = stopTracing(sctx)
	}()
	orc, err := orchestrator.Start(ctx, orchestrator.Options{Config: cfg, Logger: log})
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	<-ctx.Done()
	stop()
	orc.Shutdown(cfg.DrainTimeout)
	return 0
}
