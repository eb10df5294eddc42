import { defineConfig } from "vitest/config"

// The workspace's packages export their TypeScript sources under this condition (see their package.json
// "exports"), so tests run without a prior build; published, the same imports resolve to dist/.
const sourceCondition = "@effect-dbpool/source"

export default defineConfig({
  plugins: [{
    name: "effect-dbpool:source-condition",
    // Every Vite environment, not only `ssr.resolve.conditions`: Vitest loads globalSetup in an environment of its
    // own that ignores the ssr settings (vitest-dev/vitest#9429).
    configEnvironment: () => ({ resolve: { conditions: [sourceCondition] } })
  }],
  test: {
    include: ["test/**/*.test.ts", "packages/*/test/**/*.test.ts"],
    globalSetup: ["test/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Test files share one server and observe it through pg_stat_activity filtered by their own application_name.
    fileParallelism: true,
    maxWorkers: 2,
    // The JSON report lets .ci/run close with a plain "N passed, N failed" line.
    reporters: ["default", ["json", { outputFile: "test-results.json" }]]
  }
})
