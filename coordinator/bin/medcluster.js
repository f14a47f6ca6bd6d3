#!/usr/bin/env node
// Committed shim so `npm ci` can link the bin before anything is built.
import('../dist/cli/main.js')
  .then((cli) => cli.main(process.argv.slice(2)))
  .catch((err) => {
    if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main.js')) {
      console.error('medcluster is not built yet: run `npm run build` at the repository root.');
    } else {
      console.error(err);
    }
    process.exit(1);
  });
