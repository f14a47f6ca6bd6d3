// Entry point for bundled builds (the GPU machine gets the CLI as one file).
import { main } from './main.js';

main(process.argv.slice(2)).catch((err) => {
  console.error(err);
  process.exit(1);
});
