export * from './parse.js';
export * from './tasks.js';
